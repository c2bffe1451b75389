//! The Prometheus provider: instant (`/api/v1/query`) and range (`/api/v1/query_range`) queries.
//! A vector becomes a list of numbers (one per series), a scalar a number, a matrix the values of
//! its series in order; an empty result is no data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::domain::{condition::Value, run::Observation};
use hopngo_kit::http::HttpClient;

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: String,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

fn number(v: &serde_json::Value) -> Option<f64> {
    // A sample is `[timestamp, "value"]`.
    let text = v.get(1)?.as_str()?;
    Some(match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => text.parse().ok()?,
    })
}

/// Decodes a Prometheus API answer into a value.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let response: ApiResponse =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus API response: {e}"))?;
    if response.status != "success" {
        return Err(format!("Prometheus: {} ({})", response.error, response.error_type));
    }
    let data = response.data.ok_or("Prometheus: no data in a successful response")?;
    let bad = || format!("Prometheus: malformed {} result", data.result_type);
    Ok(match data.result_type.as_str() {
        "scalar" => Value::Num(number(&data.result).ok_or_else(bad)?),
        "vector" => Value::List(
            data.result
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|s| s.get("value").and_then(number).map(Value::Num).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
        ),
        "matrix" => Value::List(
            data.result
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .flat_map(|s| s.get("values").and_then(|v| v.as_array()).cloned().unwrap_or_default())
                .map(|v| number(&v).map(Value::Num).ok_or_else(bad))
                .collect::<Result<_, _>>()?,
        ),
        "string" => Value::Str(data.result.get(1).and_then(|v| v.as_str()).unwrap_or_default().to_string()),
        other => return Err(format!("Prometheus: unknown result type {other:?}")),
    })
}

/// Runs a query.
pub async fn measure(
    http: &HttpClient,
    address: &str,
    query: &str,
    timeout: Duration,
    range: Option<(Duration, Duration)>,
) -> Observation {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let base = address.trim_end_matches('/');
    let timeout_param = format!("{}s", timeout.as_secs_f64());
    let url = match range {
        None => url::Url::parse_with_params(
            &format!("{base}/api/v1/query"),
            &[("query", query), ("time", &format!("{now:.3}")), ("timeout", &timeout_param)],
        ),
        Some((span, step)) => url::Url::parse_with_params(
            &format!("{base}/api/v1/query_range"),
            &[
                ("query", query),
                ("start", &format!("{:.3}", now - span.as_secs_f64())),
                ("end", &format!("{now:.3}")),
                ("step", &format!("{}s", step.as_secs_f64())),
                ("timeout", &timeout_param),
            ],
        ),
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => return Observation::Error(format!("bad Prometheus address {address:?}: {e}")),
    };
    let response = match http.send("GET", url.as_str(), &[], "", timeout).await {
        Ok(r) => r,
        Err(e) => return Observation::Error(e),
    };
    // Prometheus answers errors (bad query: 400, timeout: 503, …) with a JSON body saying why.
    match decode(&response.body) {
        Ok(value) => Observation::Value { value, detail: String::new() },
        Err(e) if response.status == 200 => Observation::Error(e),
        Err(e) => Observation::Error(format!("HTTP {}: {e}", response.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_result_type() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]},{"metric":{"a":"b"},"value":[1,"NaN"]}]}}"#;
        let Value::List(items) = decode(vector).unwrap() else { panic!("a vector is a list") };
        assert_eq!(items[0], Value::Num(0.25));
        assert!(matches!(items[1], Value::Num(n) if n.is_nan()));
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(decode(empty).unwrap().is_no_data());
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#;
        assert_eq!(decode(scalar).unwrap(), Value::Num(f64::INFINITY));
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"2"]]}]}}"#;
        assert_eq!(decode(matrix).unwrap(), Value::List(vec![Value::Num(1.0), Value::Num(2.0)]));
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(decode(error).unwrap_err(), "Prometheus: parse error at char 3 (bad_data)");
    }
}
