//! Writing into JSON values that may hold anything a client or provider sent.
//! `serde_json`'s `value["key"] = x` panics when `value` is neither an object nor null
//! (`"stream_options": []`); these never do.

use serde_json::{Map, Value};

pub trait SetKey {
    /// Sets `key` to `value` if this is an object (null becomes one); otherwise leaves it
    /// as it is and returns false.
    fn set_key(&mut self, key: &str, value: Value) -> bool;

    /// The member `key` if it is an object (created empty if missing or null); `None` if
    /// this is not an object or the member is something else.
    fn object_at(&mut self, key: &str) -> Option<&mut Value>;
}

impl SetKey for Value {
    fn set_key(&mut self, key: &str, value: Value) -> bool {
        if self.is_null() {
            *self = Value::Object(Map::new());
        }
        match self {
            Value::Object(m) => {
                m.insert(key.to_owned(), value);
                true
            }
            _ => false,
        }
    }

    fn object_at(&mut self, key: &str) -> Option<&mut Value> {
        if self.is_null() {
            *self = Value::Object(Map::new());
        }
        let member = self
            .as_object_mut()?
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if member.is_null() {
            *member = Value::Object(Map::new());
        }
        member.is_object().then_some(member)
    }
}

/// A new object of the members `keys` moved out of `v` (those it has).
pub fn take_members(v: &mut Value, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .filter_map(|k| Some(((*k).to_owned(), v.get_mut(*k)?.take())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_into_objects_and_null_and_leaves_anything_else() {
        let mut v = json!({"a": 1});
        assert!(v.set_key("b", json!(2)));
        assert_eq!(v, json!({"a": 1, "b": 2}));
        let mut n = Value::Null;
        assert!(n.set_key("b", json!(2)));
        assert_eq!(n, json!({"b": 2}));
        for mut other in [json!([]), json!("s"), json!(1), json!(true)] {
            let before = other.clone();
            assert!(!other.set_key("b", json!(2)));
            assert_eq!(other, before);
        }
    }

    #[test]
    fn members_are_moved_into_a_new_object() {
        let mut v = json!({"a": 1, "b": [2], "c": 3});
        assert_eq!(
            take_members(&mut v, &["b", "a", "z"]),
            json!({"a": 1, "b": [2]})
        );
        assert_eq!(v, json!({"a": null, "b": null, "c": 3}));
        assert_eq!(take_members(&mut json!([1]), &["a"]), json!({}));
    }

    #[test]
    fn nested_objects_are_made_where_missing_and_refused_where_not_objects() {
        let mut v = json!({"stream_options": []});
        assert!(v.object_at("stream_options").is_none());
        let mut v = json!({"stream_options": null});
        v.object_at("stream_options")
            .unwrap()
            .set_key("include_usage", json!(true));
        assert_eq!(v, json!({"stream_options": {"include_usage": true}}));
        let mut v = json!({});
        v.object_at("x").unwrap().set_key("y", json!(1));
        assert_eq!(v, json!({"x": {"y": 1}}));
    }
}
