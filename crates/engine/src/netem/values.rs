//! The values of network conditions, as a test gives them (numbers or strings with a unit),
//! checked here once, before anything is sent to a guest.
//!
//! A bare number's unit, per field: seconds for `delay` and `jitter` (as every timeout of the
//! API), a fraction from 0 to 1 for `loss`, `duplicate`, `reorder` and `corrupt`, bits per
//! second for `rate`. Strings carry their unit: `"100ms"`, `"250us"`, `"1.5s"`; `"5%"`;
//! `"1mbit"`, `"512kbit"`, `"10kbps"` (`bps` is bytes per second, as in `tc`).

use std::fmt;
use std::time::Duration;

/// A value as given: a number or a string with a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_string())
    }
}

/// A value that is not valid for its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid network condition {field}={value}: {reason}")]
pub struct NetemError {
    /// The argument's name (`delay`, `loss`, ..., `vlan`, `groups`).
    pub field: String,
    /// The value as given.
    pub value: String,
    pub reason: String,
}

impl NetemError {
    pub fn new(field: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        NetemError {
            field: field.to_string(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// The conditions as given, each optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConditionsInput {
    pub delay: Option<Value>,
    pub jitter: Option<Value>,
    pub loss: Option<Value>,
    pub duplicate: Option<Value>,
    pub reorder: Option<Value>,
    pub corrupt: Option<Value>,
    pub rate: Option<Value>,
}

/// Checked conditions: what `tc qdisc ... netem` is given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conditions {
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    /// Fractions from 0 to 1.
    pub loss: Option<f64>,
    pub duplicate: Option<f64>,
    pub reorder: Option<f64>,
    pub corrupt: Option<f64>,
    /// Bits per second.
    pub rate: Option<u64>,
}

/// The longest delay or jitter accepted (netem's own limit is far beyond any useful test).
const MAX_DELAY: Duration = Duration::from_secs(3600);

impl ConditionsInput {
    /// Checks every value; the first invalid one is the error.
    pub fn check(&self) -> Result<Conditions, NetemError> {
        let c = Conditions {
            delay: opt(&self.delay, |v| duration("delay", v))?,
            jitter: opt(&self.jitter, |v| duration("jitter", v))?,
            loss: opt(&self.loss, |v| fraction("loss", v))?,
            duplicate: opt(&self.duplicate, |v| fraction("duplicate", v))?,
            reorder: opt(&self.reorder, |v| fraction("reorder", v))?,
            corrupt: opt(&self.corrupt, |v| fraction("corrupt", v))?,
            rate: opt(&self.rate, |v| rate("rate", v))?,
        };
        if c == Conditions::default() {
            return Err(NetemError::new(
                "conditions",
                "none",
                "give at least one of delay, jitter, loss, duplicate, reorder, corrupt, rate \
                 (clear_network_conditions removes them)",
            ));
        }
        if let (Some(v), None) = (&self.jitter, c.delay) {
            return Err(NetemError::new(
                "jitter",
                v.to_string(),
                "jitter varies a delay: give a delay too",
            ));
        }
        if let (Some(v), None) = (&self.reorder, c.delay) {
            return Err(NetemError::new(
                "reorder",
                v.to_string(),
                "reordering sends some packets at once and delays the rest: give a delay too",
            ));
        }
        Ok(c)
    }
}

fn opt<T>(
    v: &Option<Value>,
    f: impl Fn(&Value) -> Result<T, NetemError>,
) -> Result<Option<T>, NetemError> {
    v.as_ref().map(f).transpose()
}

/// Splits `"12.5ms"` into (12.5, "ms"); the number must be finite and not negative.
fn number_and_unit<'a>(field: &str, text: &'a str) -> Result<(f64, &'a str), NetemError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        NetemError::new(
            field,
            format!("{text:?}"),
            "expected a number followed by a unit",
        )
    })?;
    Ok((n, unit.trim()))
}

fn finite_non_negative(field: &str, v: &Value, n: f64) -> Result<f64, NetemError> {
    if n.is_finite() && n >= 0.0 {
        Ok(n)
    } else {
        Err(NetemError::new(
            field,
            v.to_string(),
            "must be a finite number, not negative",
        ))
    }
}

fn duration(field: &str, v: &Value) -> Result<Duration, NetemError> {
    let secs = match v {
        Value::Number(n) => finite_non_negative(field, v, *n)?,
        Value::Text(t) => {
            let (n, unit) = number_and_unit(field, t)?;
            let scale = match unit.to_ascii_lowercase().as_str() {
                "s" | "sec" | "secs" => 1.0,
                "ms" | "msec" | "msecs" => 1e-3,
                "us" | "usec" | "usecs" => 1e-6,
                "" => {
                    return Err(NetemError::new(
                        field,
                        v.to_string(),
                        "a string needs a unit (s, ms, us); a bare number is in seconds",
                    ))
                }
                _ => {
                    return Err(NetemError::new(
                        field,
                        v.to_string(),
                        format!("unknown unit {unit:?} (s, ms, us)"),
                    ))
                }
            };
            finite_non_negative(field, v, n * scale)?
        }
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DELAY => Ok(d),
        _ => Err(NetemError::new(
            field,
            v.to_string(),
            "at most one hour (3600 s)",
        )),
    }
}

fn fraction(field: &str, v: &Value) -> Result<f64, NetemError> {
    let (f, range) = match v {
        Value::Number(n) => (finite_non_negative(field, v, *n)?, "a fraction from 0 to 1"),
        Value::Text(t) => {
            let (n, unit) = number_and_unit(field, t)?;
            if unit != "%" {
                return Err(NetemError::new(
                    field,
                    v.to_string(),
                    "a string is a percentage (\"5%\"); a bare number is a fraction from 0 to 1",
                ));
            }
            (finite_non_negative(field, v, n)? / 100.0, "from 0% to 100%")
        }
    };
    if f > 1.0 {
        return Err(NetemError::new(
            field,
            v.to_string(),
            format!("must be {range}"),
        ));
    }
    Ok(f)
}

fn rate(field: &str, v: &Value) -> Result<u64, NetemError> {
    let bits = match v {
        Value::Number(n) => finite_non_negative(field, v, *n)?,
        Value::Text(t) => {
            let (n, unit) = number_and_unit(field, t)?;
            let scale = match unit.to_ascii_lowercase().as_str() {
                "bit" => 1.0,
                "kbit" => 1e3,
                "mbit" => 1e6,
                "gbit" => 1e9,
                "bps" => 8.0,
                "kbps" => 8e3,
                "mbps" => 8e6,
                "gbps" => 8e9,
                _ => {
                    return Err(NetemError::new(
                        field,
                        v.to_string(),
                        format!(
                            "unknown unit {unit:?} (bit, kbit, mbit, gbit; bps, kbps, mbps, \
                             gbps are bytes per second); a bare number is bits per second"
                        ),
                    ))
                }
            };
            finite_non_negative(field, v, n * scale)?
        }
    };
    // netem keeps the rate in bytes per second, in 64 bits; 8 bit/s is its smallest step
    if !(8.0..=1e12).contains(&bits) {
        return Err(NetemError::new(
            field,
            v.to_string(),
            "must be from 8 bit/s to 1 tbit/s",
        ));
    }
    Ok(bits.round() as u64)
}

impl Conditions {
    /// The arguments of `tc qdisc ... netem`.
    pub fn netem_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(d) = self.delay {
            args.push("delay".into());
            args.push(micros(d));
            if let Some(j) = self.jitter {
                args.push(micros(j));
            }
        }
        for (name, v) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if let Some(f) = v {
                args.push(name.into());
                args.push(percent(f));
            }
        }
        if let Some(r) = self.rate {
            args.push("rate".into());
            args.push(format!("{r}bit"));
        }
        args
    }
}

fn micros(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

fn percent(f: f64) -> String {
    let s = format!("{:.6}", f * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

impl fmt::Display for Conditions {
    /// A short summary for the log and the report: `delay 200ms ±10ms, loss 5%, rate 1mbit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = self.delay {
            let mut s = format!("delay {}", human_duration(d));
            if let Some(j) = self.jitter {
                s.push_str(&format!(" ±{}", human_duration(j)));
            }
            parts.push(s);
        }
        for (name, v) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("corrupt", self.corrupt),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {}", percent(v)));
            }
        }
        if let Some(r) = self.rate {
            parts.push(format!("rate {}", human_rate(r)));
        }
        f.write_str(&parts.join(", "))
    }
}

fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

fn human_rate(bits: u64) -> String {
    for (scale, unit) in [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1000, "kbit")] {
        if bits >= scale && bits.is_multiple_of(scale) {
            return format!("{}{unit}", bits / scale);
        }
    }
    format!("{bits}bit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: f64) -> Option<Value> {
        Some(Value::Number(n))
    }
    fn text(s: &str) -> Option<Value> {
        Some(Value::Text(s.into()))
    }

    #[test]
    fn numbers_take_each_fields_unit() {
        let c = ConditionsInput {
            delay: num(0.2),
            jitter: num(0.01),
            loss: num(0.05),
            rate: num(1_000_000.0),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(c.delay, Some(Duration::from_millis(200)));
        assert_eq!(c.jitter, Some(Duration::from_millis(10)));
        assert_eq!(c.loss, Some(0.05));
        assert_eq!(c.rate, Some(1_000_000));
        assert_eq!(
            c.netem_args(),
            [
                "delay",
                "200000us",
                "10000us",
                "loss",
                "5%",
                "rate",
                "1000000bit"
            ]
        );
        assert_eq!(c.to_string(), "delay 200ms ±10ms, loss 5%, rate 1mbit");
    }

    #[test]
    fn strings_carry_their_unit() {
        let c = ConditionsInput {
            delay: text("100ms"),
            jitter: text("250us"),
            duplicate: text("0.5%"),
            reorder: text("25%"),
            corrupt: text("100%"),
            rate: text("10kbps"),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(c.delay, Some(Duration::from_millis(100)));
        assert_eq!(c.jitter, Some(Duration::from_micros(250)));
        assert_eq!(c.duplicate, Some(0.005));
        assert_eq!(c.reorder, Some(0.25));
        assert_eq!(c.corrupt, Some(1.0));
        assert_eq!(c.rate, Some(80_000));
        assert_eq!(
            c.netem_args(),
            [
                "delay",
                "100000us",
                "250us",
                "duplicate",
                "0.5%",
                "reorder",
                "25%",
                "corrupt",
                "100%",
                "rate",
                "80000bit"
            ]
        );
        let s = ConditionsInput {
            delay: text("1.5s"),
            rate: text("1mbit"),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(s.delay, Some(Duration::from_millis(1500)));
        assert_eq!(s.rate, Some(1_000_000));
    }

    fn error(input: ConditionsInput) -> NetemError {
        input.check().unwrap_err()
    }

    #[test]
    fn bad_values_name_the_field_and_the_value() {
        let cases = [
            (
                ConditionsInput {
                    delay: text("1e300s"),
                    ..Default::default()
                },
                "delay",
                "\"1e300s\"",
            ),
            (
                ConditionsInput {
                    delay: num(1e20), // beyond a Duration
                    ..Default::default()
                },
                "delay",
                "100000000000000000000",
            ),
            (
                ConditionsInput {
                    delay: num(-1.0),
                    ..Default::default()
                },
                "delay",
                "-1",
            ),
            (
                ConditionsInput {
                    delay: text("100"),
                    ..Default::default()
                },
                "delay",
                "\"100\"",
            ),
            (
                ConditionsInput {
                    delay: text("100 minutes"),
                    ..Default::default()
                },
                "delay",
                "\"100 minutes\"",
            ),
            (
                ConditionsInput {
                    delay: num(f64::NAN),
                    ..Default::default()
                },
                "delay",
                "NaN",
            ),
            (
                ConditionsInput {
                    delay: num(7200.0),
                    ..Default::default()
                },
                "delay",
                "7200",
            ),
            (
                ConditionsInput {
                    loss: num(5.0),
                    ..Default::default()
                },
                "loss",
                "5",
            ),
            (
                ConditionsInput {
                    loss: text("150%"),
                    ..Default::default()
                },
                "loss",
                "\"150%\"",
            ),
            (
                ConditionsInput {
                    corrupt: text("0.5"),
                    ..Default::default()
                },
                "corrupt",
                "\"0.5\"",
            ),
            (
                ConditionsInput {
                    duplicate: text("lots"),
                    ..Default::default()
                },
                "duplicate",
                "\"lots\"",
            ),
            (
                ConditionsInput {
                    rate: text("1mbits"),
                    ..Default::default()
                },
                "rate",
                "\"1mbits\"",
            ),
            (
                ConditionsInput {
                    rate: num(0.0),
                    ..Default::default()
                },
                "rate",
                "0",
            ),
            (
                ConditionsInput {
                    jitter: num(0.01),
                    ..Default::default()
                },
                "jitter",
                "0.01",
            ),
            (
                ConditionsInput {
                    reorder: num(0.1),
                    loss: num(0.1),
                    ..Default::default()
                },
                "reorder",
                "0.1",
            ),
            (ConditionsInput::default(), "conditions", "none"),
        ];
        for (input, field, value) in cases {
            let e = error(input);
            assert_eq!((e.field.as_str(), e.value.as_str()), (field, value), "{e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("invalid network condition {field}={value}: ")),
                "{shown}"
            );
        }
    }

    #[test]
    fn zero_is_a_valid_condition() {
        let c = ConditionsInput {
            loss: num(0.0),
            ..Default::default()
        }
        .check()
        .unwrap();
        assert_eq!(c.netem_args(), ["loss", "0%"]);
    }
}
