//! Kubernetes: sidekey added to annotated pod templates, by `sidekey inject` on YAML files and
//! by `sidekey inject --webhook` as a mutating admission webhook, both through [`mutate`].
//!
//! Uses no runtime module of the proxy: it holds no token and serves no route.

pub mod mutate;
pub mod node;
pub mod webhook;
pub mod yaml;

pub use mutate::{MutateError, Options, Outcome};

/// Why a stream could not be injected.
#[derive(Debug)]
pub enum StreamError {
    /// Document `document` (1-based) is not YAML.
    Yaml { document: usize, error: yaml::YamlError },
    /// A workload in document `document` could not be injected.
    Mutate { document: usize, line: usize, error: MutateError },
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Yaml { document, error } => write!(f, "document {document}: {error}"),
            StreamError::Mutate { document, line, error } => write!(f, "document {document} (line {line}): {error}"),
        }
    }
}

/// A stream with sidekey injected, and what was done to each annotated template.
pub struct Injected {
    pub output: String,
    pub outcomes: Vec<Outcome>,
}

/// `sidekey inject` on a YAML stream: the documents with an annotated pod template written
/// anew, every other one written back as it came, byte for byte.
pub fn inject_stream(text: &str, opts: &Options) -> Result<Injected, StreamError> {
    let mut output = String::with_capacity(text.len() * 2);
    let mut outcomes = Vec::new();
    for (i, chunk) in yaml::split(text).iter().enumerate() {
        let document = i + 1;
        let parsed = yaml::parse(chunk).map_err(|error| StreamError::Yaml { document, error })?;
        let Some(mut node) = parsed else {
            output.push_str(chunk.text);
            continue;
        };
        let done = mutate::mutate(&mut node, opts).map_err(|error| StreamError::Mutate {
            document,
            line: chunk.line,
            error,
        })?;
        let changed = done.iter().any(|o| matches!(o, Outcome::Injected(_)));
        outcomes.extend(done);
        if !changed {
            output.push_str(chunk.text);
            continue;
        }
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(yaml::preamble(chunk.text));
        output.push_str(&yaml::emit(&node));
        if chunk.text.lines().rev().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_end() == "...") {
            output.push_str("...\n");
        }
    }
    Ok(Injected { output, outcomes })
}
