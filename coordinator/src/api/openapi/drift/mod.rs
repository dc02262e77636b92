//! The drift test: a sample of every request and reply type the route table names, serialized as the API
//! sends or reads it, must have exactly the properties its generated schema lists, recursively. A property
//! the schema does not know, a required one that is missing, a value of the wrong type or outside an enum
//! or range, a reply property that is always present but not listed as required, a listed property no
//! sample ever carries, or a schema no sample reaches, fails it.
//!
//! The samples are struct literals, so a field added to a type does not compile until its sample names it,
//! and then this test checks that the schema describes it (which the derive does by itself; the test is
//! what proves it, and what catches a hand-written part or an annotation that went stale).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::document;
use crate::api::routes::rest_routes;
use crate::api::service::ListPage;

mod samples;
use samples::{principal, project, samples};

const SCHEMAS: &str = "#/components/schemas/";

/// A body as JSON, and the component schema it must match.
struct Sample {
    schema: String,
    json: Value,
    /// A reply (the server writes it) rather than a request (the server reads it).
    reply: bool,
}

/// A reply body as the handler serializes it, which the type must read back into the same JSON: clients
/// (the CLI) decode replies into these types (`api::dto`), so a reply they would misread fails here.
fn reply<T: ToSchema + Serialize + DeserializeOwned>(value: T) -> Sample {
    let json = serde_json::to_value(&value).expect("a reply serializes");
    match serde_json::from_value::<T>(json.clone()) {
        Ok(back) => assert_eq!(
            serde_json::to_value(&back).expect("a reply serializes"),
            json,
            "the {} sample changes when a client reads it back",
            T::name()
        ),
        Err(e) => panic!("a client cannot read the {} sample: {e}: {json}", T::name()),
    }
    Sample {
        schema: T::name().into_owned(),
        json,
        reply: true,
    }
}

/// A request body: the sample serialized, which the type must read back (so the JSON is one the API
/// accepts, not merely one the type can write).
fn request<T: ToSchema + Serialize + DeserializeOwned>(value: T) -> Sample {
    let json = serde_json::to_value(&value).expect("a request serializes");
    if let Err(e) = serde_json::from_value::<T>(json.clone()) {
        panic!("the {} sample is not accepted: {e}: {json}", T::name());
    }
    Sample {
        schema: T::name().into_owned(),
        json,
        reply: false,
    }
}

fn page<T: ToSchema + Serialize + DeserializeOwned>(item: T) -> Sample {
    reply(ListPage {
        items: vec![item],
        next_page_token: "2".to_owned(),
    })
}

/// Checks JSON values against the document's schemas, and remembers which object schemas and which of
/// their properties the values reached.
#[derive(Clone)]
struct Checker<'d> {
    doc: &'d Value,
    /// Component schemas reached.
    reached: BTreeSet<String>,
    /// Object schemas (by location in the document) and the properties they list.
    listed: BTreeMap<String, BTreeSet<String>>,
    /// The properties of each object schema that some value carried, not null.
    carried: BTreeMap<String, BTreeSet<String>>,
}

fn types(schema: &Value) -> Vec<&str> {
    match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

impl<'d> Checker<'d> {
    fn new(doc: &'d Value) -> Self {
        Checker {
            doc,
            reached: BTreeSet::new(),
            listed: BTreeMap::new(),
            carried: BTreeMap::new(),
        }
    }

    /// `schema` with its `$ref`s followed, and where it is.
    fn resolve(
        &mut self,
        mut schema: &'d Value,
        mut at: String,
    ) -> Result<(&'d Value, String), String> {
        while let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target
                .strip_prefix(SCHEMAS)
                .ok_or_else(|| format!("{at}: $ref {target} is not a component schema"))?;
            schema = self.doc["components"]["schemas"]
                .get(name)
                .ok_or_else(|| format!("{at}: $ref {target} does not resolve"))?;
            self.reached.insert(name.to_owned());
            at = target.to_owned();
        }
        Ok((schema, at))
    }

    /// Whether `schema` admits null.
    fn nullable(&mut self, schema: &'d Value, at: &str) -> bool {
        let Ok((schema, _)) = self.resolve(schema, at.to_owned()) else {
            return false;
        };
        types(schema).contains(&"null")
            || ["oneOf", "anyOf"].iter().any(|k| {
                schema[*k]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| types(a).contains(&"null")))
            })
    }

    /// The properties, required names and extra-property schema of an object schema, through `$ref` and
    /// `allOf` (serde's `flatten`).
    fn object(
        &mut self,
        schema: &'d Value,
        at: &str,
        props: &mut BTreeMap<String, (&'d Value, String)>,
        required: &mut BTreeSet<String>,
        extra: &mut Option<&'d Value>,
    ) -> Result<(), String> {
        let (schema, at) = self.resolve(schema, at.to_owned())?;
        if let Some(parts) = schema["allOf"].as_array() {
            for (i, part) in parts.iter().enumerate() {
                self.object(part, &format!("{at}/allOf/{i}"), props, required, extra)?;
            }
        }
        if let Some(map) = schema["properties"].as_object() {
            for (name, prop) in map {
                props.insert(name.clone(), (prop, format!("{at}/properties/{name}")));
            }
        }
        for name in schema["required"].as_array().into_iter().flatten() {
            required.insert(name.as_str().unwrap_or_default().to_owned());
        }
        if let Some(more) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            *extra = Some(more);
        }
        Ok(())
    }

    /// Every way `value` (at `path` in the sample) fails `schema` (at `at` in the document).
    fn check(
        &mut self,
        value: &Value,
        schema: &'d Value,
        at: &str,
        path: &str,
        reply: bool,
    ) -> Vec<String> {
        let (schema, at) = match self.resolve(schema, at.to_owned()) {
            Ok(found) => found,
            Err(e) => return vec![e],
        };
        for key in ["oneOf", "anyOf"] {
            if let Some(alternatives) = schema[key].as_array() {
                let mut matched = Vec::new();
                for (i, alternative) in alternatives.iter().enumerate() {
                    let mut trial = self.clone();
                    if trial
                        .check(value, alternative, &format!("{at}/{key}/{i}"), path, reply)
                        .is_empty()
                    {
                        matched.push(trial);
                    }
                }
                let fits = if key == "oneOf" {
                    matched.len() == 1
                } else {
                    !matched.is_empty()
                };
                return match matched.into_iter().next() {
                    Some(trial) if fits => {
                        *self = trial;
                        Vec::new()
                    }
                    _ => vec![format!(
                        "{path}: {value} fits not exactly one of {at}/{key}"
                    )],
                };
            }
        }
        let mut errors = Vec::new();
        let allowed = types(schema);
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            errors.push(format!("{path}: {value} is not of type {allowed:?} ({at})"));
            return errors;
        }
        if let Some(values) = schema["enum"].as_array() {
            if !values.contains(value) {
                errors.push(format!("{path}: {value} is not one of {values:?} ({at})"));
            }
        }
        if let Some(n) = value.as_f64() {
            if schema["minimum"].as_f64().is_some_and(|min| n < min)
                || schema["maximum"].as_f64().is_some_and(|max| n > max)
            {
                errors.push(format!("{path}: {n} is out of the range of {at}"));
            }
        }
        if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                errors.extend(self.check(
                    item,
                    schema,
                    &format!("{at}/items"),
                    &format!("{path}[{i}]"),
                    reply,
                ));
            }
        }
        if let Some(fields) = value.as_object() {
            let mut props = BTreeMap::new();
            let mut required = BTreeSet::new();
            let mut extra = None;
            if let Err(e) = self.object(schema, &at, &mut props, &mut required, &mut extra) {
                errors.push(e);
                return errors;
            }
            if props.is_empty() && extra.is_none() {
                // A free-form object (the OpenAPI document itself): any properties.
                return errors;
            }
            if !props.is_empty() {
                self.listed
                    .entry(at.clone())
                    .or_default()
                    .extend(props.keys().cloned());
            }
            for name in &required {
                if !fields.contains_key(name) {
                    errors.push(format!(
                        "{path}: required property {name} is missing ({at})"
                    ));
                }
            }
            if reply {
                for (name, (prop, prop_at)) in &props {
                    if !required.contains(name) && !self.nullable(prop, prop_at) {
                        errors.push(format!(
                            "{path}: {name} is never null, so a reply always carries it, but {at} does not \
                             require it"
                        ));
                    }
                }
            }
            for (name, field) in fields {
                let field_path = format!("{path}.{name}");
                match (props.get(name), extra) {
                    (Some((prop, prop_at)), _) => {
                        if !field.is_null() {
                            self.carried
                                .entry(at.clone())
                                .or_default()
                                .insert(name.clone());
                        }
                        errors.extend(self.check(field, prop, prop_at, &field_path, reply));
                    }
                    (None, Some(more)) => {
                        errors.extend(self.check(
                            field,
                            more,
                            &format!("{at}/additionalProperties"),
                            &field_path,
                            reply,
                        ));
                    }
                    (None, None) => {
                        errors.push(format!("{field_path}: {at} does not know this property"))
                    }
                }
            }
        }
        errors
    }

    /// Listed properties no value carried, and component schemas no value reached.
    fn unexercised(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (at, listed) in &self.listed {
            let carried = self.carried.get(at).cloned().unwrap_or_default();
            for name in listed.difference(&carried) {
                errors.push(format!(
                    "{at}: no sample carries {name} (give it a value in a sample)"
                ));
            }
        }
        for name in self.doc["components"]["schemas"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if !self.reached.contains(name) {
                errors.push(format!("{SCHEMAS}{name}: no sample reaches this schema"));
            }
        }
        errors
    }

    /// Checks a sample against the component schema it names.
    fn sample(&mut self, sample: &Sample) -> Vec<String> {
        let Some(schema) = self.doc["components"]["schemas"].get(&sample.schema) else {
            return vec![format!("no component schema {}", sample.schema)];
        };
        self.reached.insert(sample.schema.clone());
        let at = format!("{SCHEMAS}{}", sample.schema);
        let path = format!("{} sample", sample.schema);
        self.check(&sample.json, schema, &at, &path, sample.reply)
    }
}

#[test]
fn every_body_sample_has_exactly_the_properties_of_its_schema() {
    let doc = document();
    let samples = samples();
    let mut checker = Checker::new(doc);
    let mut errors: Vec<String> = samples.iter().flat_map(|s| checker.sample(s)).collect();
    errors.extend(checker.unexercised());
    assert!(
        errors.is_empty(),
        "the OpenAPI schemas and the types disagree:\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_route_body_has_a_sample() {
    let samples = samples();
    for route in rest_routes() {
        for (body, reply) in [(route.request, false), (route.reply.schema, true)] {
            let Some(body) = body else { continue };
            let name = body().name;
            assert!(
                samples.iter().any(|s| s.schema == name && s.reply == reply),
                "{} {}: no {} sample of {name} in drift::samples",
                route.method.openapi(),
                route.path,
                if reply { "reply" } else { "request" },
            );
        }
    }
}

#[test]
fn the_checker_refuses_what_the_schema_does_not_describe() {
    let doc = document();
    let project = reply(project());
    let check = |json: Value| {
        Checker::new(doc).sample(&Sample {
            schema: project.schema.clone(),
            json,
            reply: true,
        })
    };
    assert!(check(project.json.clone()).is_empty());

    // A field the type gained but the schema lacks.
    let mut extra = project.json.clone();
    extra["owner"] = json!("someone");
    assert!(check(extra)
        .iter()
        .any(|e| e.contains("does not know this property")));
    // A required field the type lost, a nested one too.
    let mut missing = project.json.clone();
    missing.as_object_mut().map(|m| m.remove("name"));
    assert!(check(missing)
        .iter()
        .any(|e| e.contains("required property name")));
    let mut nested = project.json.clone();
    nested["policy"]
        .as_object_mut()
        .map(|m| m.remove("network"));
    assert!(check(nested)
        .iter()
        .any(|e| e.contains("required property network")));
    // A wrong type and a value outside an enum.
    let mut wrong = project.json.clone();
    wrong["created_at"] = json!("yesterday");
    assert!(!check(wrong).is_empty());
    let mut outside = project.json;
    outside["policy"]["network"] = json!("internet");
    assert!(check(outside).iter().any(|e| e.contains("is not one of")));

    // A property no sample carries, and a schema no sample reaches.
    let mut checker = Checker::new(doc);
    assert!(checker.sample(&reply(principal())).is_empty());
    let unexercised = checker.unexercised();
    assert!(unexercised
        .iter()
        .any(|e| e.ends_with("Job: no sample reaches this schema")));
}
