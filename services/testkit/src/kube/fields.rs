//! Field sets for server-side apply: which leaf fields of an object a manager set, in the
//! `FieldsV1` shape the API server reports in `metadata.managedFields`. Maps are walked field by
//! field; a list whose items all carry a `name` is associative (keyed by name, like containers,
//! ports and env); any other list is atomic (one leaf), as the API server treats lists without
//! merge keys.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    /// A map field.
    Field(String),
    /// The item of an associative list whose `name` is this.
    Key(String),
}

/// A path from the object's root to a leaf.
pub type Path = Vec<Seg>;

/// Top-level fields that identify the object rather than belong to a manager.
fn identity(path: &[Seg]) -> bool {
    let field = |i: usize, name: &str| matches!(path.get(i), Some(Seg::Field(f)) if f == name);
    field(0, "apiVersion")
        || field(0, "kind")
        || (field(0, "metadata")
            && (field(1, "name")
                || field(1, "namespace")
                || field(1, "resourceVersion")
                || field(1, "uid")
                || field(1, "generation")
                || field(1, "creationTimestamp")
                || field(1, "managedFields")))
}

fn keyed(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|item| item.get("name").and_then(Value::as_str).is_some())
}

/// The leaf paths `value` sets (identity fields left out). `only` restricts them to paths under
/// one top-level field (`status` for the status subresource), `except` drops one.
pub fn leaves(value: &Value, only: Option<&str>, except: Option<&str>) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out.retain(|p| {
        let top = match p.first() {
            Some(Seg::Field(f)) => f.as_str(),
            _ => "",
        };
        !identity(p) && only.is_none_or(|o| o == top) && except.is_none_or(|e| e != top)
    });
    out
}

fn walk(value: &Value, at: &mut Path, out: &mut BTreeSet<Path>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                at.push(Seg::Field(k.clone()));
                walk(v, at, out);
                at.pop();
            }
        }
        Value::Array(list) if keyed(list) => {
            for item in list {
                let name = item["name"].as_str().unwrap_or_default().to_string();
                at.push(Seg::Key(name));
                if let Value::Object(map) = item {
                    for (k, v) in map {
                        if k == "name" {
                            continue;
                        }
                        at.push(Seg::Field(k.clone()));
                        walk(v, at, out);
                        at.pop();
                    }
                }
                // The item itself (its name) is a leaf too, so an item with only a name is kept.
                out.insert(at.clone());
                at.pop();
            }
        }
        _ => {
            out.insert(at.clone());
        }
    }
}

/// The value at `path`, if any.
pub fn get<'a>(value: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut here = value;
    for seg in path {
        here = match seg {
            Seg::Field(f) => here.get(f)?,
            Seg::Key(name) => here.as_array()?.iter().find(|i| i.get("name").and_then(Value::as_str) == Some(name))?,
        };
    }
    Some(here)
}

/// Sets the value at `path` (creating maps and keyed items on the way) to the value `from` has
/// there.
pub fn copy(into: &mut Value, from: &Value, path: &[Seg]) {
    let Some(leaf) = get(from, path) else { return };
    let mut here = into;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        here = match seg {
            Seg::Field(f) => {
                if !here.is_object() {
                    *here = Value::Object(Map::new());
                }
                let map = here.as_object_mut().expect("made an object");
                if last {
                    map.insert(f.clone(), leaf.clone());
                    return;
                }
                map.entry(f.clone()).or_insert(Value::Null)
            }
            Seg::Key(name) => {
                if !here.is_array() {
                    *here = Value::Array(Vec::new());
                }
                let list = here.as_array_mut().expect("made an array");
                let name_of = |i: &Value| i.get("name").and_then(Value::as_str).map(str::to_string);
                let at = match list.iter().position(|i| name_of(i).as_deref() == Some(name)) {
                    Some(at) => at,
                    None => {
                        // A new item goes where the applied list has it, as the API server keeps
                        // the applied order: before the first item that comes after it there.
                        let order: Vec<String> = get(from, &path[..i])
                            .and_then(Value::as_array)
                            .map(|l| l.iter().filter_map(name_of).collect())
                            .unwrap_or_default();
                        let rank = |n: &str| order.iter().position(|o| o == n);
                        let mine = rank(name);
                        let at = list
                            .iter()
                            .position(|item| match (mine, name_of(item).as_deref().and_then(rank)) {
                                (Some(m), Some(other)) => other > m,
                                _ => false,
                            })
                            .unwrap_or(list.len());
                        list.insert(at, json!({"name": name}));
                        at
                    }
                };
                &mut list[at]
            }
        };
    }
}

/// Removes the value at `path`; a keyed item left with only its name goes too.
pub fn remove(value: &mut Value, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else { return };
    let Some(parent) = get_mut(value, parents) else { return };
    match last {
        Seg::Field(f) => {
            if let Some(map) = parent.as_object_mut() {
                map.remove(f);
            }
        }
        Seg::Key(name) => {
            if let Some(list) = parent.as_array_mut() {
                list.retain(|i| i.get("name").and_then(Value::as_str) != Some(name));
            }
        }
    }
    // An item of a keyed list that kept only its name was the removed field's holder.
    if let Some(Seg::Key(name)) = parents.last()
        && let Some(item) = get(value, parents)
        && item.as_object().is_some_and(|m| m.len() == 1 && m.contains_key("name"))
    {
        let name = name.clone();
        if let Some(list) = get_mut(value, &parents[..parents.len() - 1]).and_then(Value::as_array_mut) {
            list.retain(|i| i.get("name").and_then(Value::as_str) != Some(&name));
        }
    }
}

fn get_mut<'a>(value: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut here = value;
    for seg in path {
        here = match seg {
            Seg::Field(f) => here.get_mut(f)?,
            Seg::Key(name) => {
                here.as_array_mut()?.iter_mut().find(|i| i.get("name").and_then(Value::as_str) == Some(name))?
            }
        };
    }
    Some(here)
}

/// `.spec.replicas`, `.spec.template.spec.containers[name="app"].image`: how a conflict names a
/// field.
pub fn describe(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Seg::Key(name) => out.push_str(&format!("[name={name:?}]")),
        }
    }
    out
}

/// The set in the API server's `FieldsV1` shape: `{"f:spec": {"f:replicas": {}}}`, keyed items as
/// `k:{"name":"app"}` with a `.` entry for the item itself.
pub fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut here = &mut root;
        for seg in path {
            let key = match seg {
                Seg::Field(f) => format!("f:{f}"),
                Seg::Key(name) => format!("k:{}", json!({ "name": name })),
            };
            here = here.entry(key).or_insert_with(|| Value::Object(Map::new())).as_object_mut().expect("an object");
        }
        if matches!(path.last(), Some(Seg::Key(_))) {
            here.insert(".".into(), json!({}));
        }
    }
    Value::Object(root)
}

/// The paths a merge or update changed between `before` and `after` (leaves of `after` whose
/// value differs), for ownership by an `Update` manager.
pub fn changed(before: &Value, after: &Value, only: Option<&str>, except: Option<&str>) -> BTreeSet<Path> {
    leaves(after, only, except).into_iter().filter(|p| get(before, p) != get(after, p)).collect()
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `move`, `copy`, `test`, all or nothing.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch is a list of operations")?;
    let mut work = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let at = |field: &str| -> Result<Vec<String>, String> {
            let pointer = op[field].as_str().ok_or(format!("operation {i}: `{field}` is required"))?;
            pointer_tokens(pointer).map_err(|e| format!("operation {i}: {e}"))
        };
        let value = || op.get("value").cloned().ok_or(format!("operation {i}: `value` is required"));
        match op["op"].as_str() {
            Some("add") => add(&mut work, &at("path")?, value()?),
            Some("remove") => take(&mut work, &at("path")?).map(drop),
            Some("replace") => {
                let path = at("path")?;
                take(&mut work, &path)?;
                add(&mut work, &path, value()?)
            }
            Some("move") => {
                let moved = take(&mut work, &at("from")?)?;
                add(&mut work, &at("path")?, moved)
            }
            Some("copy") => {
                let copied = pointer_get(&work, &at("from")?).cloned().ok_or("`from` does not exist".to_string())?;
                add(&mut work, &at("path")?, copied)
            }
            Some("test") => match pointer_get(&work, &at("path")?) == Some(&value()?) {
                true => Ok(()),
                false => Err("the test failed".to_string()),
            },
            other => Err(format!("unknown operation {other:?}")),
        }
        .map_err(|e| format!("operation {i}: {e}"))?;
    }
    *target = work;
    Ok(())
}

fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer.strip_prefix('/').ok_or(format!("{pointer:?} is not a JSON pointer"))?;
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn pointer_get<'a>(value: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(value, |here, t| match here {
        Value::Object(m) => m.get(t),
        Value::Array(a) => a.get(t.parse::<usize>().ok()?),
        _ => None,
    })
}

fn parent<'a>(value: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    tokens.iter().try_fold(value, |here, t| match here {
        Value::Object(m) => m.get_mut(t).ok_or(format!("{t:?} does not exist")),
        Value::Array(a) => {
            t.parse::<usize>().ok().and_then(|i| a.get_mut(i)).ok_or(format!("index {t:?} does not exist"))
        }
        _ => Err(format!("{t:?} is inside a value that is not an object or a list")),
    })
}

fn add(value: &mut Value, tokens: &[String], new: Value) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        *value = new;
        return Ok(());
    };
    match parent(value, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), new);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(new);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, new);
                Ok(())
            }
            _ => Err(format!("index {last:?} is out of range")),
        },
        _ => Err("the parent is not an object or a list".into()),
    }
}

fn take(value: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let (last, parents) = tokens.split_last().ok_or("the whole document cannot be removed")?;
    match parent(value, parents)? {
        Value::Object(m) => m.remove(last).ok_or(format!("{last:?} does not exist")),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(format!("index {last:?} does not exist")),
        },
        _ => Err("the parent is not an object or a list".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &[&str]) -> Path {
        s.iter().map(|f| Seg::Field(f.to_string())).collect()
    }

    #[test]
    fn leaves_walk_maps_and_key_named_lists() {
        let v = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "i:1"}]}},
                     "args": ["a", "b"]}
        });
        let got = leaves(&v, None, None);
        assert!(got.contains(&path(&["metadata", "labels", "x"])));
        assert!(got.contains(&path(&["spec", "replicas"])));
        assert!(got.contains(&path(&["spec", "args"])), "a list without names is one leaf");
        let image: Path = vec![
            Seg::Field("spec".into()),
            Seg::Field("template".into()),
            Seg::Field("spec".into()),
            Seg::Field("containers".into()),
            Seg::Key("app".into()),
            Seg::Field("image".into()),
        ];
        assert!(got.contains(&image));
        assert!(!got.contains(&path(&["metadata", "name"])), "identity fields belong to nobody");
        assert_eq!(describe(&image), ".spec.template.spec.containers[name=\"app\"].image");
        let fields = fields_v1(&got);
        assert_eq!(fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["."], json!({}));

        let mut into = json!({});
        copy(&mut into, &v, &image);
        assert_eq!(into, json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "i:1"}]}}}}));
        remove(&mut into, &image);
        assert_eq!(into, json!({"spec": {"template": {"spec": {"containers": []}}}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902_all_or_nothing() {
        let mut v = json!({"spec": {"containers": [{"name": "app", "image": "a:1"}], "x~y": 1}});
        json_patch(
            &mut v,
            &json!([
                {"op": "replace", "path": "/spec/containers/0/image", "value": "a:2"},
                {"op": "add", "path": "/spec/containers/-", "value": {"name": "side"}},
                {"op": "test", "path": "/spec/x~0y", "value": 1},
                {"op": "move", "from": "/spec/x~0y", "path": "/spec/z"},
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"spec": {"containers": [{"name": "app", "image": "a:2"}, {"name": "side"}], "z": 1}}));
        let before = v.clone();
        let err = json_patch(
            &mut v,
            &json!([{"op": "remove", "path": "/spec/z"}, {"op": "test", "path": "/spec/z", "value": 1}]),
        )
        .unwrap_err();
        assert!(err.contains("operation 1"), "{err}");
        assert_eq!(v, before, "a failed patch changes nothing");
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut v, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(v, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
