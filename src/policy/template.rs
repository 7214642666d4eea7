//! Path templates for policy routes: `/api/v3_0/sensors/{sensor}/data`.
//!
//! A template is a sequence of segments: a literal (`sensors`), a parameter
//! (`{sensor}`, exactly one non-empty segment) or, last only, a rest parameter
//! (`{path*}`, zero or more segments). Templates match canonical paths (see
//! `canonical`), so there is nothing to decode or normalize here.
//!
//! **Specificity** (the rule that lets overlapping routes coexist): compare two
//! templates segment by segment; at the first position where their kinds differ, a
//! literal is more specific than a parameter, and a parameter more specific than a
//! rest parameter; a template that ends where the other continues with a rest
//! parameter is more specific. So `/a/b/{y}` beats `/a/{x}/b` for `/a/b/b`. The only
//! overlapping templates this does not order are those of the same shape (`/a/{x}`
//! and `/a/{y}`): adding both is an error ([`Clash`]), because which one decides would
//! be arbitrary. [`Templates::find`] returns the most specific match by walking a
//! segment trie, literal branch first: the cost depends on the path's depth (and on
//! how many literal branches dead-end and are retried as parameters), not on the
//! number of templates.

use crate::route::ConfigMap;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Parameter(String),
    /// Zero or more remaining segments; only last.
    Rest(String),
}

impl Segment {
    /// Literal 0, parameter 1, rest 2: lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Self::Literal(_) => 0,
            Self::Parameter(_) => 1,
            Self::Rest(_) => 2,
        }
    }
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a path template starts with `/`")]
    NotAbsolute,
    #[error("empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("`{0}` is not a valid parameter: use `{{name}}` or, last, `{{name*}}`")]
    BadParameter(String),
    #[error("parameter `{0}` appears twice")]
    DuplicateParameter(String),
    #[error("`{{{0}*}}` must be the last segment")]
    RestNotLast(String),
    #[error("segment `{0}` contains a character that never appears in a canonical path")]
    BadLiteral(String),
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Template {
    /// Parses `/`, `/a/{b}/c`, `/static/{path*}`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let rest = text.strip_prefix('/').ok_or(TemplateError::NotAbsolute)?;
        let mut segments = Vec::new();
        if rest.is_empty() {
            return Ok(Self { segments });
        }
        let mut names: Vec<&str> = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (index, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(TemplateError::EmptySegment);
            }
            let segment = if let Some(inner) = part.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| TemplateError::BadParameter((*part).to_owned()))?;
                let (name, rest) = match inner.strip_suffix('*') {
                    Some(name) => (name, true),
                    None => (inner, false),
                };
                if !is_name(name) {
                    return Err(TemplateError::BadParameter((*part).to_owned()));
                }
                if names.contains(&name) {
                    return Err(TemplateError::DuplicateParameter(name.to_owned()));
                }
                names.push(name);
                if rest {
                    if index + 1 != parts.len() {
                        return Err(TemplateError::RestNotLast(name.to_owned()));
                    }
                    Segment::Rest(name.to_owned())
                } else {
                    Segment::Parameter(name.to_owned())
                }
            } else {
                if part.contains(['{', '}', '?', '#', ';', '\\'])
                    || part.chars().any(char::is_control)
                {
                    return Err(TemplateError::BadLiteral((*part).to_owned()));
                }
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        Ok(Self { segments })
    }

    /// Parameter names, in order.
    pub fn parameters(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Parameter(name) | Segment::Rest(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether some path matches both templates.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(Segment::Rest(_)), _) | (_, Some(Segment::Rest(_))) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => return false,
                _ => {}
            }
        }
    }

    /// `Less` when `self` is more specific than `other` (see the module docs);
    /// `Equal` when neither is.
    pub fn specificity(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let (mut a, mut b) = (self.segments.iter(), other.segments.iter());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(Segment::Rest(_))) => return Ordering::Less,
                (Some(Segment::Rest(_)), None) => return Ordering::Greater,
                (None, Some(_)) | (Some(_), None) => return Ordering::Equal,
                (Some(x), Some(y)) => match x.rank().cmp(&y.rank()) {
                    Ordering::Equal => {}
                    unequal => return unequal,
                },
            }
        }
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => write!(f, "/{text}")?,
                Segment::Parameter(name) => write!(f, "/{{{name}}}")?,
                Segment::Rest(name) => write!(f, "/{{{name}*}}")?,
            }
        }
        Ok(())
    }
}

/// Parameter values of a match, in template order.
pub type Captures = Vec<(String, String)>;

/// Templates compiled into a segment trie; each template carries a value `T`.
#[derive(Debug)]
pub struct Templates<T> {
    root: Node<T>,
}

#[derive(Debug)]
struct Node<T> {
    literals: ConfigMap<String, Node<T>>,
    parameter: Option<(String, Box<Node<T>>)>,
    rest: Option<(String, T)>,
    end: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            literals: ConfigMap::default(),
            parameter: None,
            rest: None,
            end: None,
        }
    }
}

/// Why a template could not be added: it has the shape of one added before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clash<'a, T> {
    pub existing: Option<&'a T>,
}

impl<T> Default for Templates<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
        }
    }
}

impl<T> Templates<T> {
    /// Adds a template. Templates that are equal up to parameter names clash (the
    /// error holds the value already there); anything else is ordered by specificity.
    pub fn insert(&mut self, template: &Template, value: T) -> Result<(), Clash<'_, T>> {
        if self.exact(template).is_some() {
            return Err(Clash {
                existing: self.exact(template),
            });
        }
        let mut node = &mut self.root;
        for segment in &template.segments {
            match segment {
                Segment::Literal(text) => {
                    node = node.literals.entry(text.clone()).or_default();
                }
                Segment::Parameter(name) => {
                    let entry = node
                        .parameter
                        .get_or_insert_with(|| (name.clone(), Box::default()));
                    node = &mut entry.1;
                }
                Segment::Rest(name) => {
                    node.rest = Some((name.clone(), value));
                    return Ok(());
                }
            }
        }
        node.end = Some(value);
        Ok(())
    }

    /// The value of a template of exactly this shape, if one was added.
    fn exact(&self, template: &Template) -> Option<&T> {
        let mut node = &self.root;
        for segment in &template.segments {
            match segment {
                Segment::Literal(text) => node = node.literals.get(text)?,
                Segment::Parameter(_) => node = &node.parameter.as_ref()?.1,
                Segment::Rest(_) => return node.rest.as_ref().map(|(_, value)| value),
            }
        }
        node.end.as_ref()
    }

    /// The most specific template matching `path` (canonical, starting with `/`).
    pub fn find(&self, path: &str) -> Option<(&T, Captures)> {
        let path = path.strip_prefix('/')?;
        // "/" has no segments; "/a/" has two, "a" and "".
        let segments = (!path.is_empty()).then_some(path);
        let mut captures = Vec::new();
        find(&self.root, segments, &mut captures).map(|value| (value, captures))
    }
}

/// Depth-first, most specific first: literal, then parameter, then rest. The first
/// complete match is the most specific one by the module's rule.
///
/// `segments` is what is left of the path, its segments still joined by `/` (so a
/// rest parameter takes it as it is); `None` once every segment is matched.
fn find<'t, T>(
    node: &'t Node<T>,
    segments: Option<&str>,
    captures: &mut Captures,
) -> Option<&'t T> {
    let Some(remaining) = segments else {
        return node.end.as_ref().or_else(|| {
            node.rest.as_ref().map(|(name, value)| {
                captures.push((name.clone(), String::new()));
                value
            })
        });
    };
    let (first, rest) = match remaining.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (remaining, None),
    };
    if let Some(child) = node.literals.get(first)
        && let Some(found) = find(child, rest, captures)
    {
        return Some(found);
    }
    if let Some((name, child)) = &node.parameter
        && !first.is_empty()
    {
        captures.push((name.clone(), first.to_owned()));
        if let Some(found) = find(child, rest, captures) {
            return Some(found);
        }
        captures.pop();
    }
    node.rest.as_ref().map(|(name, value)| {
        captures.push((name.clone(), remaining.to_owned()));
        value
    })
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    fn template(text: &str) -> Template {
        Template::parse(text).expect(text)
    }

    #[test]
    fn templates_parse_literals_parameters_and_a_final_rest() {
        assert_eq!(
            template("/api/{id}/x/{rest*}").segments,
            vec![
                Segment::Literal("api".into()),
                Segment::Parameter("id".into()),
                Segment::Literal("x".into()),
                Segment::Rest("rest".into()),
            ]
        );
        assert!(template("/").segments.is_empty());
        for (bad, error) in [
            ("api", TemplateError::NotAbsolute),
            ("/a//b", TemplateError::EmptySegment),
            ("/a/", TemplateError::EmptySegment),
            ("/{a}/{a}", TemplateError::DuplicateParameter("a".into())),
            ("/{a*}/b", TemplateError::RestNotLast("a".into())),
            ("/{a b}", TemplateError::BadParameter("{a b}".into())),
            ("/{a", TemplateError::BadParameter("{a".into())),
            ("/a?b", TemplateError::BadLiteral("a?b".into())),
        ] {
            assert_eq!(Template::parse(bad), Err(error), "{bad}");
        }
    }

    #[test]
    fn the_most_specific_template_wins() {
        let mut templates = Templates::default();
        for (text, id) in [
            ("/api/{version}/sensors/{sensor}", "sensor"),
            ("/api/v3_0/sensors/{sensor}", "v3-sensor"),
            ("/api/v3_0/sensors/stats", "stats"),
            ("/api/{rest*}", "api-fallback"),
            ("/", "root"),
        ] {
            templates.insert(&template(text), id).expect(text);
        }
        let found = |path: &str| templates.find(path).map(|(id, captures)| (*id, captures));
        assert_eq!(found("/api/v3_0/sensors/stats").map(|f| f.0), Some("stats"));
        assert_eq!(
            found("/api/v3_0/sensors/7"),
            Some(("v3-sensor", vec![("sensor".into(), "7".into())]))
        );
        assert_eq!(
            found("/api/v2_0/sensors/7"),
            Some((
                "sensor",
                vec![
                    ("version".into(), "v2_0".into()),
                    ("sensor".into(), "7".into())
                ]
            ))
        );
        // Backtracking: a literal branch that dead-ends falls back to the parameter.
        assert_eq!(
            found("/api/v3_0/sensors/7/data"),
            Some((
                "api-fallback",
                vec![("rest".into(), "v3_0/sensors/7/data".into())]
            ))
        );
        assert_eq!(found("/api").map(|f| f.0), Some("api-fallback"));
        assert_eq!(found("/").map(|f| f.0), Some("root"));
        assert_eq!(found("/other"), None);
    }

    #[test]
    fn equal_templates_clash_whatever_their_parameter_names() {
        let mut templates = Templates::default();
        templates.insert(&template("/a/{x}"), "one").expect("first");
        assert_eq!(
            templates.insert(&template("/a/{y}"), "two"),
            Err(Clash {
                existing: Some(&"one")
            })
        );
        templates
            .insert(&template("/a/{x*}"), "three")
            .expect("rest differs");
        assert!(templates.insert(&template("/a/{z*}"), "four").is_err());
    }

    #[test]
    fn overlap_and_specificity_follow_the_documented_rule() {
        let t = template;
        assert!(t("/a/{x}/b").overlaps(&t("/a/b/{y}")));
        assert_eq!(t("/a/{x}/b").specificity(&t("/a/b/{y}")), Ordering::Greater);
        assert!(!t("/a/b").overlaps(&t("/a/c")));
        assert!(!t("/a").overlaps(&t("/a/b")));
        assert!(t("/a").overlaps(&t("/a/{r*}")));
        assert_eq!(t("/a").specificity(&t("/a/{r*}")), Ordering::Less);
        assert_eq!(t("/a/{x}").specificity(&t("/a/{y}")), Ordering::Equal);
        assert_eq!(t("/a/b").specificity(&t("/a/{y}")), Ordering::Less);
    }

    /// Whether `template` matches `path` segment by segment (the specification the
    /// trie must agree with).
    fn matches(template: &Template, path: &[&str]) -> bool {
        let mut path = path.iter();
        for segment in &template.segments {
            match segment {
                Segment::Rest(_) => return true,
                Segment::Literal(text) => {
                    if path.next() != Some(&text.as_str()) {
                        return false;
                    }
                }
                Segment::Parameter(_) => {
                    if path.next().is_none_or(|s| s.is_empty()) {
                        return false;
                    }
                }
            }
        }
        path.next().is_none()
    }

    /// The parameters a matching `template` takes from `path`: a parameter its
    /// segment, a rest parameter the segments left, joined by `/`.
    fn captures_of(template: &Template, path: &[&str]) -> Captures {
        let mut captures = Vec::new();
        for (index, segment) in template.segments.iter().enumerate() {
            match segment {
                Segment::Literal(_) => {}
                Segment::Parameter(name) => {
                    captures.push((name.clone(), path[index].to_owned()));
                }
                Segment::Rest(name) => {
                    captures.push((name.clone(), path[index.min(path.len())..].join("/")));
                }
            }
        }
        captures
    }

    proptest::proptest! {
        #[test]
        fn the_trie_finds_the_most_specific_matching_template(
            shapes in proptest::collection::vec(
                proptest::collection::vec(0u8..4, 0..4), 1..12),
            path in proptest::collection::vec(0u8..4, 0..4),
        ) {
            let segment = |i: usize, kind: u8| match kind {
                0 => "a".to_owned(),
                1 => "b".to_owned(),
                2 => format!("{{p{i}}}"),
                _ => format!("{{r{i}*}}"),
            };
            let mut templates = Templates::default();
            let mut added: Vec<Template> = Vec::new();
            for shape in shapes {
                // A rest parameter only last.
                let cut = shape.iter().position(|k| *k == 3).map_or(shape.len(), |i| i + 1);
                let text: Vec<String> = shape[..cut].iter().enumerate().map(|(i, k)| segment(i, *k)).collect();
                let template = Template::parse(&format!("/{}", text.join("/"))).expect("valid");
                if templates.insert(&template, added.len()).is_ok() {
                    added.push(template);
                }
            }
            // Empty segments too: "/a//b", "/a/".
            let words = ["a", "b", "c", ""];
            let text = format!("/{}", path.iter().map(|i| words[*i as usize]).collect::<Vec<_>>().join("/"));
            // The segments of the path: none for "/", else what lies between slashes.
            let path: Vec<&str> = match &text[1..] {
                "" => Vec::new(),
                rest => rest.split('/').collect(),
            };
            let found = templates.find(&text);
            let matching: Vec<usize> = (0..added.len()).filter(|i| matches(&added[*i], &path)).collect();
            match found {
                None => proptest::prop_assert!(matching.is_empty()),
                Some((&best, captures)) => {
                    proptest::prop_assert!(matching.contains(&best));
                    proptest::prop_assert_eq!(captures, captures_of(&added[best], &path));
                    for other in matching {
                        proptest::prop_assert_ne!(
                            added[other].specificity(&added[best]),
                            Ordering::Less,
                            "{:?} is more specific than {:?}", added[other], added[best]
                        );
                    }
                }
            }
        }
    }
}
