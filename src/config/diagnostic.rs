//! Problems found in configuration, with where they are and what to do.
//!
//! Every check collects [`Problem`]s instead of stopping at the first, so an operator
//! sees all mistakes in one run of `portcullis check`. A problem points into the
//! configuration file or at the environment variable that overrode a key, by byte span;
//! [`Report`] turns spans into `file:line:col` and renders snippets with miette.

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding: what is wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub message: String,
    /// Byte span in the [`Sources`] coordinate space; `None` for the file as a whole.
    pub span: Option<Range<usize>>,
    /// Short text under the underlined span.
    pub label: Option<String>,
    pub help: Option<String>,
}

impl Problem {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            span: None,
            label: None,
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(message)
        }
    }

    pub fn at(mut self, span: Range<usize>) -> Self {
        self.span = Some(span);
        self
    }

    pub fn at_opt(mut self, span: Option<Range<usize>>) -> Self {
        self.span = span;
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// "did you mean `x`?" for a typo among known names.
pub fn nearest<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// The texts problems point into: the configuration file and the environment overrides.
///
/// Spans below `file.len()` are in the file; environment overrides are laid out after it,
/// one `NAME=value` line each, so one integer span says which of the two it is.
#[derive(Debug, Clone)]
pub struct Sources {
    pub path: PathBuf,
    pub file: String,
    env: String,
}

/// Display name of the environment source in reports.
const ENVIRONMENT: &str = "environment";

impl Sources {
    pub fn new(path: &Path, file: String) -> Self {
        Self {
            path: path.to_path_buf(),
            file,
            env: String::new(),
        }
    }

    /// Records an override line and returns the span of its value.
    pub fn add_env(&mut self, name: &str, value: &str) -> Range<usize> {
        let line_start = self.env.len();
        let _ = writeln!(self.env, "{name}={value}");
        let value_start = self.env_base() + line_start + name.len() + 1;
        value_start..value_start + value.len()
    }

    fn env_base(&self) -> usize {
        self.file.len() + 1
    }

    /// The source a span points into, and the span relative to it.
    fn locate(&self, span: &Range<usize>) -> (String, &str, Range<usize>) {
        if span.start >= self.env_base() && !self.env.is_empty() {
            let base = self.env_base();
            (
                ENVIRONMENT.to_owned(),
                &self.env,
                span.start - base..span.end - base,
            )
        } else {
            let end = span.end.min(self.file.len());
            let start = span.start.min(end);
            (self.path.display().to_string(), &self.file, start..end)
        }
    }

    /// `file:line:col` (1-based) of a span's start.
    pub fn position(&self, span: &Range<usize>) -> String {
        let (name, text, relative) = self.locate(span);
        let (line, col) = line_col(text, relative.start);
        format!("{name}:{line}:{col}")
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// All problems of one check, with the sources to show them in.
#[derive(Debug, Clone)]
pub struct Report {
    pub sources: Sources,
    pub problems: Vec<Problem>,
    /// Reports of the files this one names and that were checked with it (policy
    /// files); counted and shown after this one.
    pub others: Vec<Report>,
}

impl Report {
    pub fn new(sources: Sources, problems: Vec<Problem>) -> Self {
        Self {
            sources,
            problems,
            others: Vec::new(),
        }
    }

    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error) || self.others.iter().any(Report::has_errors)
    }

    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
            + self.others.iter().map(Report::errors).sum::<usize>()
    }

    pub fn warnings(&self) -> usize {
        let own = self.problems.iter().filter(|p| !p.is_error()).count();
        own + self.others.iter().map(Report::warnings).sum::<usize>()
    }

    /// Whether there is nothing to show, here or in the other files.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.others.iter().all(Report::is_clean)
    }

    /// One line per problem: `file:line:col: error: message (help: …)`. For logs.
    pub fn one_line_each(&self) -> Vec<String> {
        let mut lines = self.own_lines();
        for other in &self.others {
            lines.extend(other.one_line_each());
        }
        lines
    }

    fn own_lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|problem| {
                let position = match &problem.span {
                    Some(span) => self.sources.position(span),
                    None => self.sources.path.display().to_string(),
                };
                let severity = match problem.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                match &problem.help {
                    Some(help) => {
                        format!("{position}: {severity}: {} (help: {help})", problem.message)
                    }
                    None => format!("{position}: {severity}: {}", problem.message),
                }
            })
            .collect()
    }

    /// The full report for a terminal: a `file:line:col` line, a snippet and the hint
    /// for each problem, then a count.
    pub fn render(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
        let mut out = String::new();
        for (problem, line) in self.problems.iter().zip(self.own_lines()) {
            let _ = writeln!(out, "{line}");
            let diagnostic = Rendered::new(problem, &self.sources);
            let _ = handler.render_report(&mut out, &diagnostic);
            out.push('\n');
        }
        for other in self.others.iter().filter(|other| !other.is_clean()) {
            out.push_str(&other.render(color));
        }
        let _ = writeln!(
            out,
            "{}: {} error(s), {} warning(s)",
            self.sources.path.display(),
            self.errors(),
            self.warnings()
        );
        out
    }
}

/// A [`Problem`] bound to its source text, in the shape miette renders.
struct Rendered {
    message: String,
    severity: miette::Severity,
    help: Option<String>,
    source: Option<NamedSource<String>>,
    label: Option<LabeledSpan>,
}

impl Rendered {
    fn new(problem: &Problem, sources: &Sources) -> Self {
        let (source, label) = match &problem.span {
            Some(span) => {
                let (name, text, relative) = sources.locate(span);
                let label = LabeledSpan::new_with_span(problem.label.clone(), relative);
                (Some(NamedSource::new(name, text.to_owned())), Some(label))
            }
            None => (None, None),
        };
        Self {
            message: problem.message.clone(),
            severity: match problem.severity {
                Severity::Error => miette::Severity::Error,
                Severity::Warning => miette::Severity::Warning,
            },
            help: problem.help.clone(),
            source,
            label,
        }
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl Diagnostic for Rendered {
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.label
            .clone()
            .map(|label| Box::new(std::iter::once(label)) as Box<dyn Iterator<Item = LabeledSpan>>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let sources = Sources::new(Path::new("p.toml"), "a = 1\nbb = 2\n".into());
        assert_eq!(sources.position(&(0..1)), "p.toml:1:1");
        assert_eq!(sources.position(&(11..12)), "p.toml:2:6");
    }

    #[test]
    fn environment_spans_name_the_variable_line() {
        let mut sources = Sources::new(Path::new("p.toml"), "a = 1\n".into());
        sources.add_env("PORTCULLIS__A", "1");
        let span = sources.add_env("PORTCULLIS__B", "oops");
        assert_eq!(sources.position(&span), "environment:2:15");
    }

    #[test]
    fn nearest_suggests_close_names_only() {
        assert_eq!(
            nearest("flexmesures", ["flexmeasures", "demo"]),
            Some("flexmeasures")
        );
        assert_eq!(nearest("zzz", ["flexmeasures", "demo"]), None);
    }

    #[test]
    fn rendering_names_file_line_and_column() {
        let sources = Sources::new(Path::new("p.toml"), "a = 1\nbackend = \"x\"\n".into());
        let report = Report::new(
            sources,
            vec![
                Problem::error("unknown backend `x`")
                    .at(16..19)
                    .label("not declared")
                    .help("declare it"),
            ],
        );
        let text = report.render(false);
        assert!(
            text.contains("p.toml:2:11: error: unknown backend `x` (help: declare it)"),
            "{text}"
        );
        assert!(text.contains("not declared"), "{text}");
        assert!(text.contains("1 error(s), 0 warning(s)"), "{text}");
    }
}
