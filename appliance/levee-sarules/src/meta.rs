//! `meta` expressions: Perl arithmetic and logic over rule hit counts.

/// A parsed meta expression. Rule names are resolved to indices after loading.
#[derive(Debug, Clone)]
pub enum Expr {
    Num(f64),
    Rule(String),
    Idx(usize),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    And,
    Or,
    Add,
    Sub,
    Mul,
    Div,
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[st..i].to_string()));
        } else if c.is_ascii_digit() || c == b'.' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n = s[st..i].parse().map_err(|_| format!("bad number {:?}", &s[st..i]))?;
            out.push(Tok::Num(n));
        } else if c == b'(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == b')' {
            out.push(Tok::RParen);
            i += 1;
        } else {
            let two = s.get(i..i + 2).unwrap_or("");
            let op = ["&&", "||", ">=", "<=", "==", "!="]
                .into_iter()
                .find(|o| *o == two)
                .or_else(|| {
                    ["!", "+", "-", "*", "/", ">", "<"].into_iter().find(|o| o.as_bytes()[0] == c)
                })
                .ok_or_else(|| format!("unexpected {:?} in meta expression", c as char))?;
            i += op.len();
            out.push(Tok::Op(op));
        }
    }
    Ok(out)
}

/// Parses a meta expression; the error says what is malformed.
pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = lex(s)?;
    if toks.is_empty() {
        return Err("empty meta expression".into());
    }
    let mut p = Parser { toks, pos: 0, depth: 0 };
    let e = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?} in meta expression", p.toks[p.pos]));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

fn binop(t: &Tok) -> Option<(Op, u8)> {
    let Tok::Op(o) = t else { return None };
    Some(match *o {
        "||" => (Op::Or, 1),
        "&&" => (Op::And, 2),
        "==" => (Op::Eq, 3),
        "!=" => (Op::Ne, 3),
        ">" => (Op::Gt, 4),
        ">=" => (Op::Ge, 4),
        "<" => (Op::Lt, 4),
        "<=" => (Op::Le, 4),
        "+" => (Op::Add, 5),
        "-" => (Op::Sub, 5),
        "*" => (Op::Mul, 6),
        "/" => (Op::Div, 6),
        _ => return None,
    })
}

impl Parser {
    fn expr(&mut self, min: u8) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 200 {
            return Err("meta expression nested too deeply".into());
        }
        let mut lhs = self.unary()?;
        while let Some((op, prec)) = self.toks.get(self.pos).and_then(binop) {
            if prec < min {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(prec + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        let t = self.toks.get(self.pos).cloned().ok_or("meta expression ends early")?;
        self.pos += 1;
        match t {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Ident(n) => Ok(Expr::Rule(n)),
            Tok::Op("!") => Ok(Expr::Not(Box::new(self.unary()?))),
            Tok::Op("-") => Ok(Expr::Neg(Box::new(self.unary()?))),
            Tok::LParen => {
                let e = self.expr(0)?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("unbalanced parentheses in meta expression".into()),
                }
            }
            other => Err(format!("unexpected {other:?} in meta expression")),
        }
    }
}

impl Expr {
    /// Rule names the expression reads.
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            Expr::Rule(n) => out.push(n.clone()),
            Expr::Not(e) | Expr::Neg(e) => e.names(out),
            Expr::Bin(_, a, b) => {
                a.names(out);
                b.names(out);
            }
            _ => {}
        }
    }

    /// Replaces names with indices; unknown names read as 0 (SA treats a rule that did
    /// not run as not hit).
    pub fn resolve(&mut self, lookup: &dyn Fn(&str) -> Option<usize>) {
        match self {
            Expr::Rule(n) => *self = lookup(n).map_or(Expr::Num(0.0), Expr::Idx),
            Expr::Not(e) | Expr::Neg(e) => e.resolve(lookup),
            Expr::Bin(_, a, b) => {
                a.resolve(lookup);
                b.resolve(lookup);
            }
            _ => {}
        }
    }

    pub fn eval(&self, values: &[f64]) -> f64 {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Expr::Num(n) => *n,
            Expr::Rule(_) => 0.0,
            Expr::Idx(i) => values.get(*i).copied().unwrap_or(0.0),
            Expr::Not(e) => b(e.eval(values) == 0.0),
            Expr::Neg(e) => -e.eval(values),
            Expr::Bin(op, l, r) => {
                let a = l.eval(values);
                // Perl's && and || return the deciding operand, not a boolean
                match op {
                    Op::And => {
                        if a == 0.0 {
                            a
                        } else {
                            r.eval(values)
                        }
                    }
                    Op::Or => {
                        if a != 0.0 {
                            a
                        } else {
                            r.eval(values)
                        }
                    }
                    _ => {
                        let c = r.eval(values);
                        match op {
                            Op::Add => a + c,
                            Op::Sub => a - c,
                            Op::Mul => a * c,
                            Op::Div => {
                                if c == 0.0 {
                                    0.0
                                } else {
                                    a / c
                                }
                            }
                            Op::Gt => b(a > c),
                            Op::Ge => b(a >= c),
                            Op::Lt => b(a < c),
                            Op::Le => b(a <= c),
                            Op::Eq => b(a == c),
                            Op::Ne => b(a != c),
                            Op::And | Op::Or => 0.0,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_evaluates() {
        let mut e = parse("(A + B + C) > 1 && !D").expect("parse");
        e.resolve(&|n| "ABCD".find(n));
        assert_eq!(e.eval(&[1.0, 1.0, 0.0, 0.0]), 1.0);
        assert_eq!(e.eval(&[1.0, 1.0, 0.0, 1.0]), 0.0);
        assert_eq!(e.eval(&[1.0, 0.0, 0.0, 0.0]), 0.0);
        for bad in ["A &&", "(A || B", "A B", "A & B", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
