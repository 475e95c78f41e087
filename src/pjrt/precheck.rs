//! Cheap checks of a text program, in Rust, before it reaches the plugin,
//! for inputs known to crash the plugin's compiler instead of giving an
//! error: nesting so deep that its recursive parser overflows the stack,
//! and integer constants divided by a constant zero (XLA's constant folding
//! raises SIGFPE). Bytecode cannot be read here; for it, and for every
//! crash these checks do not foresee, compile in a child process
//! ([`crate::CompileOptions::isolated`]).

use crate::error::{Error, Result};
use crate::program::{Program, ProgramFormat};

/// The deepest nesting of brackets (`<`, `(`, `[`, `{`) accepted in a text
/// program. Real programs stay far below (a few tens of levels); the
/// plugin's parser recurses once per level.
pub const MAX_NESTING: usize = 1000;

/// Runs every check on a text program; bytecode passes unchecked.
///
/// Errors: [`Error::ProgramTooDeep`], [`Error::ConstantDivisionByZero`].
pub(crate) fn check(program: &Program) -> Result<()> {
    if program.format() != ProgramFormat::MlirText {
        return Ok(());
    }
    let Ok(text) = std::str::from_utf8(program.code()) else {
        return Ok(());
    };
    nesting(program.name(), text)?;
    division_by_zero(program.name(), text)
}

/// The code of a line without its `//` comment, string literals blanked
/// (so that brackets inside them are not counted) unless `keep_strings`
/// (generic-form op names are strings: `"stablehlo.divide"(...)`).
fn code_of(line: &str, keep_strings: bool) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            if keep_strings && c != '"' {
                out.push(c);
            }
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        if keep_strings {
                            out.push(next);
                        }
                    }
                }
                '"' => {
                    in_string = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

fn nesting(name: &str, text: &str) -> Result<()> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let code = code_of(line, false);
        let mut prev = ' ';
        for c in code.chars() {
            match c {
                '<' | '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(Error::ProgramTooDeep {
                            program: name.to_string(),
                            line: i + 1,
                            depth,
                            limit: MAX_NESTING,
                        });
                    }
                }
                // `->` is an arrow, not a closing bracket.
                '>' if prev == '-' => {}
                '>' | ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

/// The `%name` defined on a line (`%c = ...`, `%0:2 = ...`).
fn defined(code: &str) -> Option<&str> {
    let (lhs, _) = code.split_once(" = ")?;
    let lhs = lhs.trim();
    lhs.starts_with('%')
        .then(|| lhs.split(':').next().unwrap_or(lhs))
}

/// For an integer `stablehlo.constant` line: whether it is a splat zero.
fn int_constant(code: &str) -> Option<bool> {
    if !code.contains("stablehlo.constant") {
        return None;
    }
    let value = code.split("dense<").nth(1)?;
    let value = value.split('>').next()?.trim();
    let elem = code.rsplit("tensor<").next()?;
    let elem = elem.split('>').next()?.rsplit('x').next()?.trim();
    let is_int = elem
        .strip_prefix("ui")
        .or_else(|| elem.strip_prefix('i'))
        .is_some_and(|bits| !bits.is_empty() && bits.chars().all(|c| c.is_ascii_digit()));
    is_int.then(|| value == "0" || value == "false")
}

/// The first two `%operands` after `op` on a line.
fn operands<'a>(code: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let rest = code.split(op).nth(1)?;
    let mut names = rest
        .split(|c: char| !(c.is_alphanumeric() || c == '%' || c == '_' || c == '#' || c == '.'))
        .filter(|t| t.starts_with('%'));
    Some((names.next()?, names.next()?))
}

fn division_by_zero(name: &str, text: &str) -> Result<()> {
    // Integer constants of the current function: name -> is zero.
    let mut consts: std::collections::HashMap<String, bool> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let code = code_of(line, true);
        if code.contains("func.func") {
            consts.clear();
        }
        if let (Some(def), Some(zero)) = (defined(&code), int_constant(&code)) {
            consts.insert(def.to_string(), zero);
            continue;
        }
        for op in ["stablehlo.remainder", "stablehlo.divide"] {
            if !code.contains(op) {
                continue;
            }
            let Some((a, b)) = operands(&code, op) else {
                continue;
            };
            if consts.contains_key(a) && consts.get(b) == Some(&true) {
                return Err(Error::ConstantDivisionByZero {
                    program: name.to_string(),
                    line: i + 1,
                    op: op.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_not_arrows_strings_or_comments() {
        let ok = "func.func @main(%a: tensor<2xf32>) -> tensor<2xf32> { // ((((\n  \"<<<<\"\n}";
        assert!(nesting("m", ok).is_ok());
        let deep = format!(
            "{}{}",
            "tuple<".repeat(MAX_NESTING + 1),
            ">".repeat(MAX_NESTING + 1)
        );
        match nesting("m", &format!("x\n{deep}")) {
            Err(Error::ProgramTooDeep { line, depth, .. }) => {
                assert_eq!((line, depth), (2, MAX_NESTING + 1));
            }
            other => panic!("{other:?}"),
        }
        let fits = format!("{}{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(nesting("m", &fits).is_ok());
    }

    #[test]
    fn division_by_constant_zero_is_found_in_both_forms() {
        let pretty = "func.func public @main() -> tensor<i32> {\n  %a = stablehlo.constant dense<7> : tensor<i32>\n  %b = stablehlo.constant dense<0> : tensor<i32>\n  %c = stablehlo.remainder %a, %b : tensor<i32>\n  return %c : tensor<i32>\n}";
        match division_by_zero("m", pretty) {
            Err(Error::ConstantDivisionByZero { line, op, .. }) => {
                assert_eq!((line, op.as_str()), (4, "stablehlo.remainder"));
            }
            other => panic!("{other:?}"),
        }
        let generic = "func.func public @main() -> tensor<2xui8> {\n  %0 = \"stablehlo.constant\"() <{value = dense<7> : tensor<2xui8>}> : () -> tensor<2xui8>\n  %1 = \"stablehlo.constant\"() <{value = dense<0> : tensor<2xui8>}> : () -> tensor<2xui8>\n  %2 = \"stablehlo.divide\"(%0, %1) : (tensor<2xui8>, tensor<2xui8>) -> tensor<2xui8>\n}";
        assert!(division_by_zero("m", generic).is_err());
        // A runtime dividend is XLA-defined (x / 0 = -1), floats are IEEE.
        let runtime = "func.func public @main(%a: tensor<i32>) -> tensor<i32> {\n  %b = stablehlo.constant dense<0> : tensor<i32>\n  %c = stablehlo.remainder %a, %b : tensor<i32>\n}";
        assert!(division_by_zero("m", runtime).is_ok());
        let float = pretty
            .replace("i32", "f32")
            .replace("dense<0>", "dense<0.0>");
        assert!(division_by_zero("m", &float).is_ok());
    }
}
