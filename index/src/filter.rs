//! Metadata filters: `{"lang": "en"}` (equality; every listed field must match),
//! `{"year": {"in": [2020, 2021]}}` (membership), `{"and": [..]}`, `{"or": [..]}`.

use serde_json::Value;

use crate::error::{IndexError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(String, Value),
    In(String, Vec<Value>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

impl Filter {
    /// Parses the JSON form; errors name the offending part.
    pub fn parse(v: &Value) -> Result<Filter> {
        let obj = v
            .as_object()
            .ok_or_else(|| IndexError::BadFilter(format!("expected an object, got {v}")))?;
        if obj.is_empty() {
            return Err(IndexError::BadFilter(
                "an empty object matches nothing in particular; omit the filter instead".into(),
            ));
        }
        let mut parts = Vec::new();
        for (k, val) in obj {
            match k.as_str() {
                "and" | "or" => {
                    let items = val.as_array().ok_or_else(|| {
                        IndexError::BadFilter(format!("`{k}` takes a list of filters, got {val}"))
                    })?;
                    if items.is_empty() {
                        return Err(IndexError::BadFilter(format!(
                            "`{k}` needs at least one filter"
                        )));
                    }
                    let subs = items
                        .iter()
                        .map(Filter::parse)
                        .collect::<Result<Vec<_>>>()?;
                    parts.push(if k == "and" {
                        Filter::And(subs)
                    } else {
                        Filter::Or(subs)
                    });
                }
                field => match val {
                    Value::Object(o) if o.len() == 1 && o.contains_key("in") => {
                        let list = o["in"].as_array().ok_or_else(|| {
                            IndexError::BadFilter(format!(
                                "`{field}`: `in` takes a list, got {}",
                                o["in"]
                            ))
                        })?;
                        parts.push(Filter::In(field.to_owned(), list.clone()));
                    }
                    Value::Object(_) => {
                        return Err(IndexError::BadFilter(format!(
                            "`{field}`: an object condition must be {{\"in\": [...]}}"
                        )))
                    }
                    other => parts.push(Filter::Eq(field.to_owned(), other.clone())),
                },
            }
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one")
        } else {
            Filter::And(parts)
        })
    }

    pub fn matches(&self, metadata: &Value) -> bool {
        let get = |f: &str| metadata.get(f);
        match self {
            Filter::Eq(f, v) => get(f).is_some_and(|x| json_eq(x, v)),
            Filter::In(f, vs) => get(f).is_some_and(|x| vs.iter().any(|v| json_eq(x, v))),
            Filter::And(fs) => fs.iter().all(|f| f.matches(metadata)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(metadata)),
        }
    }
}

/// JSON equality where 2020 and 2020.0 are the same number.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_combine() {
        let m = json!({"lang": "en", "year": 2021, "tags": "x"});
        let ok = |f: Value| Filter::parse(&f).unwrap().matches(&m);
        assert!(ok(json!({"lang": "en"})));
        assert!(!ok(json!({"lang": "de"})));
        assert!(ok(json!({"lang": "en", "year": 2021.0})));
        assert!(!ok(json!({"lang": "en", "year": 2020})));
        assert!(ok(json!({"year": {"in": [2020, 2021]}})));
        assert!(!ok(json!({"missing": {"in": [1]}})));
        assert!(ok(json!({"or": [{"lang": "de"}, {"year": 2021}]})));
        assert!(!ok(json!({"and": [{"lang": "en"}, {"year": 1999}]})));
        for bad in [
            json!([]),
            json!({}),
            json!({"or": []}),
            json!({"a": {"gt": 1}}),
            json!({"a": {"in": 3}}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad} should be refused");
        }
    }
}
