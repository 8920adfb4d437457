//! ImportApiKeys: API keys from AWS's CSV "API key file format".

use crate::model::NewApiKey;
use crate::{Error, Result, UsagePlans};

/// Imported key values must be at least this long (AWS's file-format rule).
const MIN_IMPORTED_VALUE_LEN: usize = 30;

/// One valid row of the file.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    value: String,
    description: Option<String>,
    enabled: bool,
    plan_ids: Vec<String>,
}

/// The keys imported and the rows skipped.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Imported {
    pub(crate) ids: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Imports the CSV `body`. With `fail_on_warnings`, any bad row refuses the
/// whole file and nothing is imported. A value imported before is updated
/// (name, description, enabled) instead of duplicated.
pub(crate) fn import(plans: &UsagePlans, body: &[u8], fail_on_warnings: bool) -> Result<Imported> {
    let (rows, mut warnings) = parse(body, plans)?;
    if fail_on_warnings && !warnings.is_empty() {
        return Err(Error::bad_request(format!(
            "Invalid API key file: {}",
            warnings.join("; ")
        )));
    }
    if fail_on_warnings {
        // Rows can clash with each other (one value, overlapping plans):
        // import into a scratch copy first, so a refused file changes nothing.
        let scratch = UsagePlans::new();
        scratch.restore(plans.snapshot())?;
        let (_, rehearsal) = import_rows(&scratch, rows.clone());
        if !rehearsal.is_empty() {
            return Err(Error::bad_request(format!(
                "Invalid API key file: {}",
                rehearsal.join("; ")
            )));
        }
    }
    let (ids, row_warnings) = import_rows(plans, rows);
    warnings.extend(row_warnings);
    Ok(Imported { ids, warnings })
}

/// Imports valid rows; the ids imported and a warning per row that failed.
fn import_rows(plans: &UsagePlans, rows: Vec<(usize, Row)>) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::with_capacity(rows.len());
    let mut warnings = Vec::new();
    for (line, row) in rows {
        match import_row(plans, row) {
            Ok(id) => ids.push(id),
            Err(e) => warnings.push(format!("line {line}: {}", e.message())),
        }
    }
    (ids, warnings)
}

fn import_row(plans: &UsagePlans, row: Row) -> Result<String> {
    let id = match plans.api_key_by_value(&row.value) {
        Some(existing) => {
            plans.update_api_key(&existing.id, |key| {
                key.name = Some(row.name.clone());
                key.description = row.description.clone();
                key.enabled = row.enabled;
                Ok(())
            })?;
            existing.id
        }
        None => {
            let mut input = NewApiKey::new(row.name)
                .with_value(row.value)
                .with_enabled(row.enabled);
            input.description = row.description;
            plans.create_api_key(input)?.id
        }
    };
    for plan_id in &row.plan_ids {
        let already = plans.usage_plan_key(plan_id, &id).is_ok();
        if !already {
            plans.add_key_to_plan(plan_id, &id)?;
        }
    }
    Ok(id)
}

/// The row's plans exist, and joining them would not put the key in two
/// plans covering one stage — found here, so `failonwarnings` can refuse
/// the file before anything is written.
fn check_plans(plans: &UsagePlans, value: &str, plan_ids: &[String]) -> Result<(), String> {
    let mut joined = match plans.api_key_by_value(value) {
        Some(key) => plans
            .usage_plans_of_key(&key.id)
            .map_err(|e| e.message().to_owned())?,
        None => Vec::new(),
    };
    for id in plan_ids {
        let plan = plans
            .usage_plan(id)
            .map_err(|_| format!("unknown usage plan '{id}'"))?;
        if joined.iter().any(|p| p.id == plan.id) {
            continue;
        }
        if let Some(other) = joined.iter().find(|p| p.overlaps(&plan)) {
            return Err(format!(
                "usage plans '{}' and '{}' cover a common stage; a key can be in only one",
                other.id, plan.id
            ));
        }
        joined.push(plan);
    }
    Ok(())
}

/// Valid rows with their line numbers, and a warning per bad row.
type Parsed = (Vec<(usize, Row)>, Vec<String>);

fn parse(body: &[u8], plans: &UsagePlans) -> Result<Parsed> {
    // The csv reader takes an unclosed quote to run to the end of the
    // file, which would swallow every row after it into one bad row: an
    // odd number of double quotes (RFC 4180 doubles them inside quoted
    // fields) refuses the file instead.
    if body.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
        return Err(Error::bad_request(
            "Invalid API key file: a quoted field is not closed (an odd number of double quotes)",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|e| Error::bad_request(format!("Invalid API key file: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(name_col), Some(key_col)) = (column("name"), column("key")) else {
        return Err(Error::bad_request(
            "Invalid API key file: the header must name the columns Name and Key",
        ));
    };
    let (description_col, enabled_col, plans_col) = (
        column("description"),
        column("enabled"),
        column("usageplanids"),
    );
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    // Each value's line: a value twice in one file is a warning (its
    // second row would update the key its first just made).
    let mut lines_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                warnings.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let record = with_single_quoted_plans(&record, plans_col);
        let field = |col: Option<usize>| {
            col.and_then(|c| record.get(c))
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let row = (|| {
            let value = field(Some(key_col)).ok_or("missing Key")?.to_owned();
            if value.chars().count() < MIN_IMPORTED_VALUE_LEN {
                return Err(format!(
                    "Key must be at least {MIN_IMPORTED_VALUE_LEN} characters"
                ));
            }
            crate::model::validate_key_value(&value).map_err(|e| e.message().to_owned())?;
            let enabled = match field(enabled_col) {
                None => true,
                Some(v) if v.eq_ignore_ascii_case("true") => true,
                Some(v) if v.eq_ignore_ascii_case("false") => false,
                Some(v) => return Err(format!("Enabled must be TRUE or FALSE, not '{v}'")),
            };
            let plan_ids: Vec<String> = field(plans_col)
                .map(|v| {
                    let v = v.strip_prefix('\'').unwrap_or(v);
                    let v = v.strip_suffix('\'').unwrap_or(v);
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            check_plans(plans, &value, &plan_ids)?;
            Ok(Row {
                name: field(Some(name_col)).ok_or("missing Name")?.to_owned(),
                value,
                description: field(description_col).map(str::to_owned),
                enabled,
                plan_ids,
            })
        })();
        match row {
            Ok(row) => match lines_of.get(&row.value) {
                Some(first) => {
                    warnings.push(format!("line {line}: the same key value as line {first}"))
                }
                None => {
                    lines_of.insert(row.value.clone(), line);
                    rows.push((line, row));
                }
            },
            Err(why) => warnings.push(format!("line {line}: {why}")),
        }
    }
    Ok((rows, warnings))
}

/// The record's fields, with a list of plan ids in single quotes (the API
/// key file format allows double or single quotes around it) as one
/// field: CSV quotes only with double quotes, so `'a,b'` arrives as the two
/// fields `'a` and `b'`. Fields after the list keep their columns.
fn with_single_quoted_plans(record: &csv::StringRecord, plans_col: Option<usize>) -> Vec<String> {
    let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
    let Some(col) = plans_col else {
        return fields;
    };
    let opens = |f: &str| f.starts_with('\'') && (f.len() == 1 || !f.ends_with('\''));
    if !fields.get(col).is_some_and(|f| opens(f)) {
        return fields;
    }
    if let Some(last) = (col + 1..fields.len()).find(|&i| fields[i].ends_with('\'')) {
        let joined = fields[col..=last].join(",");
        fields.splice(col..=last, [joined]);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiStage, NewUsagePlan};

    #[test]
    fn a_refused_file_changes_nothing_even_when_rows_clash() {
        let plans = UsagePlans::new();
        let a = plans.create_usage_plan(NewUsagePlan::new("a")).unwrap();
        let b = plans.create_usage_plan(NewUsagePlan::new("b")).unwrap();
        // Plans without stages overlap: one value cannot join both.
        let value = "v".repeat(30);
        let csv = format!(
            "name,key,usageplanIds\nk1,{value},{}\nk2,{value},{}\n",
            a.id, b.id
        );
        let err = import(&plans, csv.as_bytes(), true).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadRequest);
        assert!(plans.api_keys().is_empty(), "nothing imported");
        // Without failonwarnings the first row lands and the second warns.
        let imported = import(&plans, csv.as_bytes(), false).unwrap();
        assert_eq!((imported.ids.len(), imported.warnings.len()), (1, 1));
    }

    #[test]
    fn a_value_twice_in_one_file_is_imported_once_with_a_warning() {
        let plans = UsagePlans::new();
        let value = "v".repeat(30);
        let csv = format!("name,key\nfirst,{value}\nsecond,{value}\n");
        let err = import(&plans, csv.as_bytes(), true).unwrap_err();
        assert!(err
            .message()
            .contains("line 3: the same key value as line 2"));
        assert!(plans.api_keys().is_empty(), "nothing imported");
        let imported = import(&plans, csv.as_bytes(), false).unwrap();
        assert_eq!((imported.ids.len(), imported.warnings.len()), (1, 1));
        assert_eq!(plans.api_keys()[0].name.as_deref(), Some("first"));
    }

    /// `'a,b'` and `"a,b"` both name two plans; columns after the list
    /// keep theirs.
    #[test]
    fn plan_ids_in_single_or_double_quotes() {
        let plans = UsagePlans::new();
        let stage = |name| NewUsagePlan::new(name).with_api_stage(ApiStage::new("api", name));
        let a = plans.create_usage_plan(stage("a")).unwrap().id;
        let b = plans.create_usage_plan(stage("b")).unwrap().id;
        let rows = [
            format!("k1,{},'{a},{b}',first", "1".repeat(30)),
            format!("k2,{},\"{a},{b}\",second", "2".repeat(30)),
            format!("k3,{},'{a}',third", "3".repeat(30)),
            format!("k4,{},' {a} , {b} ',fourth", "4".repeat(30)),
        ];
        let csv = format!("Name,Key,UsagePlanIds,Description\n{}\n", rows.join("\n"));
        let imported = import(&plans, csv.as_bytes(), true).unwrap();
        assert_eq!(imported.ids.len(), 4, "{:?}", imported.warnings);
        let in_a = plans.usage_plan_keys(&a).unwrap().len();
        let in_b = plans.usage_plan_keys(&b).unwrap().len();
        assert_eq!((in_a, in_b), (4, 3));
        let mut descriptions: Vec<_> = plans
            .api_keys()
            .into_iter()
            .filter_map(|k| k.description)
            .collect();
        descriptions.sort();
        assert_eq!(descriptions, ["first", "fourth", "second", "third"]);
    }

    #[test]
    fn an_unclosed_quote_refuses_the_file_and_imports_nothing() {
        let plans = UsagePlans::new();
        let (one, two) = ("a".repeat(30), "b".repeat(30));
        let csv = format!("name,key\n\"first,{one}\nsecond,{two}\n");
        for fail_on_warnings in [false, true] {
            let err = import(&plans, csv.as_bytes(), fail_on_warnings).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::BadRequest);
            assert!(err.message().contains("not closed"), "{}", err.message());
        }
        assert!(plans.api_keys().is_empty(), "nothing imported");
        // Quotes doubled inside a quoted field are fine.
        let csv = format!("name,key\n\"say \"\"hi\"\"\",{one}\n");
        let imported = import(&plans, csv.as_bytes(), true).unwrap();
        assert_eq!(imported.ids.len(), 1);
        assert_eq!(plans.api_keys()[0].name.as_deref(), Some("say \"hi\""));
    }
}
