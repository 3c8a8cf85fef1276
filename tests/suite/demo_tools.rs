//! The web page's demo tools: the calculator's grammar and errors, the clock, calls by name, and
//! both routes through the server.

use minimind::serve::demo_tools::{calculate, iso8601, run};
use serde_json::json;

#[test]
fn arithmetic_follows_precedence() {
    let cases = [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("-2^2", -4.0),
        ("2^3^2", 512.0),
        ("2**10", 1024.0),
        ("7 % 4 + 10 / 4", 5.5),
        ("sqrt(16) + abs(-3)", 7.0),
        ("3 × (4 − 1) ÷ 2", 4.5),
        ("1.5e3 - 2E-1", 1499.8),
        ("--3", 3.0),
    ];
    for (text, expected) in cases {
        let got = calculate(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!((got - expected).abs() < 1e-9, "{text} = {got}, expected {expected}");
    }
    assert!((calculate("2 * pi").unwrap() - std::f64::consts::TAU).abs() < 1e-12);
}

#[test]
fn bad_expressions_are_errors_naming_the_column() {
    for (text, expected) in [
        ("1 +", "column 4"),
        ("(1 + 2", "expected ')'"),
        ("1 / 0", "division by zero"),
        ("2 $ 3", "unexpected '$' at column 3"),
        ("import os", "unknown name \"import\""),
        ("sqrt(-1)", "negative"),
        ("10^400", "not a finite"),
    ] {
        let err = calculate(text).expect_err(text);
        assert!(err.contains(expected), "{text}: {err}");
    }
    let deep = "(".repeat(10_000) + "1" + &")".repeat(10_000);
    assert!(calculate(&deep).is_err(), "too long");
    let nested = "(".repeat(100) + "1" + &")".repeat(100);
    assert!(calculate(&nested).unwrap_err().contains("nested deeper"));
    assert!(calculate(&"-".repeat(500)).unwrap_err().contains("nested deeper"));
}

#[test]
fn calls_and_clock() {
    assert_eq!(run("calculator", &json!({"expression": "6*7"})), Ok("42".into()));
    assert_eq!(run("calculator", &json!({"expression": "1/3"})), Ok("0.333333333333".into()));
    assert!(run("calculator", &json!({"expr": "1"})).unwrap_err().contains("expression"));
    assert!(run("rm", &json!({})).is_err());
    assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(iso8601(1_796_083_199), "2026-11-30T23:59:59Z");
    assert!(run("current_time", &json!({})).unwrap().ends_with('Z'));
}
