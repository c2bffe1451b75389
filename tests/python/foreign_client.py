"""A gRPC client that is not tonic (Python grpcio), knowing nothing but what server reflection
tells it. For each address: the services reflection lists, health's answer for each, and, for
each (method, JSON request) given, the status of calling it with a request built from the
reflected descriptors, over TLS trusting `ca_file` and with `token` as the bearer token (a call
with "anonymous": true goes without it). Prints one JSON document; the Rust test asserts on it.

Usage: foreign_client.py SPEC_JSON
  SPEC_JSON = {"ca_file": "ca.pem", "token": "eyJ...",
               "targets": [{"address": "127.0.0.1:50051",
                            "calls": [{"method": "hopngo.release.v1.ReleaseService/CreateRelease",
                                       "request": {...}, "anonymous": false}]}]}
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def probe(target, credentials, token):
    channel = grpc.secure_channel(target["address"], credentials)
    grpc.channel_ready_future(channel).result(timeout=10)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    services = sorted(database.get_services())
    health = health_pb2_grpc.HealthStub(channel)
    statuses = {}
    for name in services:
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        statuses[name] = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    calls = []
    for call in target.get("calls", []):
        service_name, method_name = call["method"].split("/")
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        request = json_format.ParseDict(call["request"], request_class())
        stub = channel.unary_unary(
            "/" + call["method"],
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        metadata = () if call.get("anonymous") else (("authorization", "Bearer " + token),)
        try:
            stub(request, timeout=10, metadata=metadata)
            calls.append({"method": call["method"], "code": "OK", "message": ""})
        except grpc.RpcError as error:
            calls.append(
                {"method": call["method"], "code": error.code().name, "message": error.details() or ""}
            )
    channel.close()
    return {"address": target["address"], "services": services, "health": statuses, "calls": calls}


def main():
    spec = json.loads(sys.argv[1])
    with open(spec["ca_file"], "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    print(json.dumps([probe(t, credentials, spec["token"]) for t in spec["targets"]]))


if __name__ == "__main__":
    main()
