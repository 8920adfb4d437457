//! A check that a request body has objects wherever its type has structs.
//!
//! serde reads a struct from a JSON array too, field by field in order:
//! `{"throttle": [5, 10]}` would be a throttle of burst 5 and rate 10.
//! AWS answers 400 to that; so do we. [`check`] runs the type's own
//! `Deserialize` over the parsed body through a deserializer that refuses
//! an array where a struct is wanted, and is otherwise `serde_json`'s
//! reading of a [`Value`].

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// The refusal of an array where an object belongs.
pub(super) const AN_ARRAY: &str = "expected a JSON object, found an array";

/// `Ok` when `value` read as `T` has an object wherever `T` has a struct;
/// otherwise what went wrong, for a 400.
pub(super) fn check<T: DeserializeOwned>(value: &Value) -> Result<(), String> {
    T::deserialize(ObjectsOnly(value))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A [`Value`] read as serde_json reads it, but for structs from arrays.
struct ObjectsOnly<'a>(&'a Value);

impl<'de> de::Deserializer<'de> for ObjectsOnly<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(n) = n.as_u64() {
                    visitor.visit_u64(n)
                } else if let Some(n) = n.as_i64() {
                    visitor.visit_i64(n)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Items(items.iter())),
            Value::Object(members) => visitor.visit_map(Members {
                members: members.iter(),
                value: None,
            }),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(_) => Err(de::Error::custom(AN_ARRAY)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            // Other shapes: as serde_json reads them.
            other => other.clone().deserialize_enum(name, variants, visitor),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

/// An array's items, each read the same way.
struct Items<'a>(std::slice::Iter<'a, Value>);

impl<'de> de::SeqAccess<'de> for Items<'_> {
    type Error = serde_json::Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|item| seed.deserialize(ObjectsOnly(item)))
            .transpose()
    }
}

/// An object's members, each value read the same way.
struct Members<'a> {
    members: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
}

impl<'de> de::MapAccess<'de> for Members<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.members.next() {
            Some((name, value)) => {
                self.value = Some(value);
                seed.deserialize(name.as_str().into_deserializer())
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without its name"))?;
        seed.deserialize(ObjectsOnly(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Throttle {
        burst_limit: u32,
        rate_limit: f64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "UPPERCASE")]
    enum Period {
        Day,
        Week,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Plan {
        name: String,
        throttle: Option<Throttle>,
        period: Option<Period>,
        stages: Option<Vec<Throttle>>,
    }

    fn checked(json: &str) -> Result<(), String> {
        check::<Plan>(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn objects_pass_and_arrays_for_structs_do_not() {
        assert_eq!(checked(r#"{"name":"p"}"#), Ok(()));
        assert_eq!(
            checked(
                r#"{"name":"p","throttle":{"burstLimit":5,"rateLimit":10},"period":"DAY",
                "stages":[{"burstLimit":1,"rateLimit":0.5}]}"#
            ),
            Ok(())
        );
        for json in [
            r#"["p"]"#,
            r#"{"name":"p","throttle":[5,10]}"#,
            r#"{"name":"p","stages":[[1,0.5]]}"#,
        ] {
            let error = checked(json).unwrap_err();
            assert!(error.contains("expected a JSON object"), "{json}: {error}");
        }
        // Whatever else is wrong stays for the parse proper to say.
        assert!(checked(r#"{"name":"p","period":"YEAR"}"#).is_err());
        assert!(checked(r#"{"name":7}"#).is_err());
    }
}
