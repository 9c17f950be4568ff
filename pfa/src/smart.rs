//! Drive SMART data in Backblaze's Drive Stats CSV layout: one row per drive-day, with
//! `date, serial_number, failure` and any number of `smart_N_raw` / `smart_N_normalized`
//! columns. Empty cells are missing values (NaN), never zero.
//!
//! Parsing is pure: it reads from any `io::Read` the caller opened.

use std::collections::{BTreeMap, HashMap};

use crate::PfaError;

/// Most rows one data set may hold (the Backblaze extracts here hold 15,000).
pub const MAX_ROWS: usize = 5_000_000;
/// Most SMART columns one data set may hold.
pub const MAX_SMART_COLUMNS: usize = 512;

/// One drive-day.
#[derive(Clone, Debug, PartialEq)]
pub struct DriveDay {
    /// Index into [`SmartDataset::drives`].
    pub drive: usize,
    /// Days since 1970-01-01.
    pub day: i32,
    /// The row's `failure` flag.
    pub failure: bool,
    /// One value per [`SmartDataset::columns`]; NaN where the cell was empty or absent.
    pub values: Vec<f64>,
}

/// One drive: its serial and what is known of its failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Drive {
    /// The serial number.
    pub serial: String,
    /// The last day a row of this drive says `failure = 1` (the failure day), if any.
    pub failure_day: Option<i32>,
}

/// Drive-days from one or more CSV files, sorted by drive then day.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SmartDataset {
    /// SMART column names (`smart_5_raw`, ...), sorted by attribute number then kind.
    pub columns: Vec<String>,
    /// The drives, in order of first appearance.
    pub drives: Vec<Drive>,
    /// The rows, sorted by (drive, day).
    pub rows: Vec<DriveDay>,
}

impl SmartDataset {
    /// Parse one or more CSV sources (`(name, reader)`); their SMART columns are united and a
    /// column one source lacks is missing in its rows.
    pub fn from_csv<R: std::io::Read>(sources: Vec<(String, R)>) -> Result<SmartDataset, PfaError> {
        struct Raw {
            serial: String,
            day: i32,
            failure: bool,
            cells: Vec<(String, f64)>,
        }
        let mut raws = Vec::new();
        let mut names = BTreeMap::new();
        for (source, reader) in sources {
            let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(reader);
            let headers = rdr.headers().map_err(|e| PfaError::csv(&source, 1, e))?.clone();
            let find = |name: &str| {
                headers.iter().position(|h| h.trim() == name).ok_or_else(|| PfaError::Data {
                    file: source.clone(),
                    line: 1,
                    reason: format!(
                        "no `{name}` column: a Backblaze Drive Stats file needs date, serial_number and failure"
                    ),
                })
            };
            let (date_col, serial_col, failure_col) = (find("date")?, find("serial_number")?, find("failure")?);
            let smart: Vec<(usize, String)> = headers
                .iter()
                .enumerate()
                .filter_map(|(i, h)| smart_attribute(h.trim()).map(|key| (i, key, h.trim().to_string())))
                .map(|(i, key, name)| {
                    names.insert(key, name.clone());
                    (i, name)
                })
                .collect();
            if names.len() > MAX_SMART_COLUMNS {
                return Err(PfaError::Data {
                    file: source,
                    line: 1,
                    reason: format!("more than {MAX_SMART_COLUMNS} SMART columns"),
                });
            }
            for (n, record) in rdr.records().enumerate() {
                let line = n + 2;
                let record = record.map_err(|e| PfaError::csv(&source, line, e))?;
                let bad = |reason: String| PfaError::Data { file: source.clone(), line, reason };
                let field = |i: usize| record.get(i).unwrap_or("").trim();
                let day = parse_date(field(date_col)).ok_or_else(|| bad(format!("bad date `{}`", field(date_col))))?;
                let serial = field(serial_col);
                if serial.is_empty() {
                    return Err(bad("empty serial_number".into()));
                }
                let failure = match field(failure_col) {
                    "0" | "0.0" => false,
                    "1" | "1.0" => true,
                    other => return Err(bad(format!("failure must be 0 or 1, not `{other}`"))),
                };
                let mut cells = Vec::with_capacity(smart.len());
                for (i, name) in &smart {
                    let text = field(*i);
                    if text.is_empty() {
                        continue;
                    }
                    let v: f64 = text.parse().map_err(|_| bad(format!("{name}: `{text}` is not a number")))?;
                    if !v.is_finite() {
                        return Err(bad(format!("{name}: `{text}` is not finite")));
                    }
                    cells.push((name.clone(), v));
                }
                if raws.len() >= MAX_ROWS {
                    return Err(bad(format!("more than {MAX_ROWS} rows")));
                }
                raws.push(Raw { serial: serial.to_string(), day, failure, cells });
            }
        }
        let columns: Vec<String> = names.into_values().collect();
        let index: HashMap<&str, usize> = columns.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let mut drive_of: HashMap<String, usize> = HashMap::new();
        let mut drives: Vec<Drive> = Vec::new();
        let mut rows = Vec::with_capacity(raws.len());
        for raw in raws {
            let drive = *drive_of.entry(raw.serial.clone()).or_insert_with(|| {
                drives.push(Drive { serial: raw.serial.clone(), failure_day: None });
                drives.len() - 1
            });
            if raw.failure {
                let d = &mut drives[drive].failure_day;
                *d = Some(d.map_or(raw.day, |f| f.max(raw.day)));
            }
            let mut values = vec![f64::NAN; columns.len()];
            for (name, v) in raw.cells {
                if let Some(&i) = index.get(name.as_str()) {
                    values[i] = v;
                }
            }
            rows.push(DriveDay { drive, day: raw.day, failure: raw.failure, values });
        }
        rows.sort_by_key(|r| (r.drive, r.day));
        Ok(SmartDataset { columns, drives, rows })
    }

    /// Whether some drive has more than one day (lead time can be measured).
    pub fn is_multi_day(&self) -> bool {
        self.rows.windows(2).any(|w| w[0].drive == w[1].drive)
    }

    /// The value of column `name` in `row`, NaN when the data set has no such column.
    pub fn value(&self, row: &DriveDay, name: &str) -> f64 {
        self.columns.iter().position(|c| c == name).map_or(f64::NAN, |i| row.values[i])
    }

    /// Number of drives that failed.
    pub fn failed_drives(&self) -> usize {
        self.drives.iter().filter(|d| d.failure_day.is_some()).count()
    }
}

/// Sort key of a SMART column: (attribute number, kind), or None for other columns.
fn smart_attribute(header: &str) -> Option<(u16, String)> {
    let rest = header.strip_prefix("smart_")?;
    let (num, kind) = rest.split_once('_')?;
    let num: u16 = num.parse().ok()?;
    matches!(kind, "raw" | "normalized").then(|| (num, kind.to_string()))
}

/// `YYYY-MM-DD` to days since 1970-01-01 (proleptic Gregorian calendar).
pub fn parse_date(s: &str) -> Option<i32> {
    let mut parts = s.splitn(3, '-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || !(1900..=9999).contains(&y) {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm), shifted so that March is month 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i32 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SmartDataset, PfaError> {
        SmartDataset::from_csv(vec![("t.csv".to_string(), text.as_bytes())])
    }

    #[test]
    fn dates_count_days_since_the_epoch() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2019-12-31"), Some(18_261));
        assert_eq!(parse_date("2020-03-01").zip(parse_date("2020-02-28")).map(|(a, b)| a - b), Some(2));
        assert_eq!(parse_date("2019-02-29"), None);
        assert_eq!(parse_date("2019-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn rows_are_grouped_by_drive_and_missing_cells_are_nan() {
        let ds = parse(
            "date,serial_number,model,failure,smart_5_raw,smart_197_raw\n\
             2019-01-02,B,m,1,3,\n2019-01-01,A,m,0,0,0\n2019-01-01,B,m,0,1,2\n",
        )
        .expect("parses");
        assert_eq!(ds.columns, ["smart_5_raw", "smart_197_raw"]);
        assert_eq!(ds.drives.len(), 2);
        assert_eq!(ds.drives[0].failure_day, parse_date("2019-01-02"));
        assert_eq!(ds.drives[1].failure_day, None);
        assert_eq!(ds.rows[0].day, parse_date("2019-01-01").expect("date"));
        assert!(ds.rows[1].values[1].is_nan());
        assert!(ds.is_multi_day());
        assert_eq!(ds.failed_drives(), 1);
    }

    #[test]
    fn sources_with_different_columns_are_united() {
        let a = "date,serial_number,failure,smart_5_raw\n2019-01-01,A,0,1\n";
        let b = "date,serial_number,failure,smart_9_raw\n2019-01-01,B,0,2\n";
        let ds = SmartDataset::from_csv(vec![("a".to_string(), a.as_bytes()), ("b".to_string(), b.as_bytes())])
            .expect("parses");
        assert_eq!(ds.columns, ["smart_5_raw", "smart_9_raw"]);
        assert!(ds.value(&ds.rows[0], "smart_9_raw").is_nan());
        assert_eq!(ds.value(&ds.rows[1], "smart_9_raw"), 2.0);
        assert!(ds.value(&ds.rows[1], "smart_42_raw").is_nan());
    }

    #[test]
    fn bad_input_is_a_clear_error_with_its_line() {
        let e = parse("date,serial_number\n").expect_err("no failure column");
        assert!(e.to_string().contains("failure"), "{e}");
        let e = parse("date,serial_number,failure,smart_5_raw\n2019-01-01,A,0,x\n").expect_err("not a number");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse("date,serial_number,failure\n2019-01-01,A,2\n").expect_err("bad flag");
        assert!(e.to_string().contains("0 or 1"), "{e}");
        let e = parse("date,serial_number,failure\n2019-01-01,A\n").expect_err("short row");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
