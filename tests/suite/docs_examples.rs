//! Runs every example in README.md and docs/*.md against a real server, so
//! the docs cannot drift from what ortserve answers.
//!
//! An example is a fenced block holding a `curl` command, an `ortserve
//! check` or a Python client (tritonclient, kserve, requests, grpc stubs,
//! openai). The convention, described
//! for writers in docs/development.md ("Tested examples"):
//!
//! * a `console` block is a shell session: each `$ command` (a trailing `\`
//!   continues it) is followed by what it prints. `...` in the expected text
//!   stands for anything; whitespace is ignored and numbers agree to 1e-4;
//! * a `python` block runs as a script; a `text` block right after it is what
//!   it prints;
//! * in any other block (`bash`), each line is a command;
//! * a command shown without output must succeed (curl: a 2xx answer);
//! * `<!-- example: server=test-models -->` (or `server=text-generation`,
//!   the decoder `tiny_lm`) on the line before a block picks the server
//!   (`demo`, `make run`'s, is the default), and
//!   `<!-- not-run: REASON -->` excuses a block, saying why; a block with
//!   `kubectl` or `helm` must be excused.
//!
//! Commands run with bash in the repository root, page by page in order,
//! each page against fresh servers; `localhost:PORT` (8080, 8081, 8082,
//! 7070, 7071) becomes the test server's listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// The servers an example can ask for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    /// `make run`: the demo store's digit classifier, versions 1.0 and 2.0.
    Demo,
    /// Generated test models: `linear` 1.0 and 2.0, `multi_io`, and
    /// `squeezenet.mar` (a copy of `linear`) left for registration.
    TestModels,
    /// The generated decoder `tiny_lm` with its tokenizer.
    TextGeneration,
}

/// What a block asks for: the server to run it against, or nothing.
enum Plan {
    Run(Setup),
    Excused,
}

/// One fenced block of a page.
struct Block {
    at: String,
    lang: String,
    text: String,
    /// The HTML comment on the line before the block, if any.
    directive: Option<String>,
    /// For a `python` block: the `text` block right after it.
    output: Option<String>,
}

/// A command and what it must print (`None`: it must just succeed).
struct Step {
    at: String,
    command: String,
    expected: Option<String>,
}

#[tokio::test]
async fn every_example_in_the_docs_runs_and_answers_as_shown() {
    let mut failures = Vec::new();
    let mut run = 0;
    for page in pages() {
        let mut groups: Vec<(Setup, Vec<Step>)> = Vec::new();
        for block in blocks(&page).into_iter().filter(is_example) {
            match plan(&block) {
                Ok(Plan::Run(setup)) => match groups.iter_mut().find(|(s, _)| *s == setup) {
                    Some((_, steps)) => steps.extend(steps_of(&block)),
                    None => groups.push((setup, steps_of(&block))),
                },
                Ok(Plan::Excused) => {}
                Err(error) => failures.push(error),
            }
        }
        for (setup, steps) in groups {
            run += steps.len();
            failures.extend(run_steps(setup, &steps).await);
        }
    }
    // A parser that found nothing would pass vacuously.
    assert!(run >= 20, "only {run} example commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn outputs_match_with_elision_and_tolerance() {
    let got = r#"{"class":"3","probability":0.99985801}"#;
    assert!(same_output(
        r#"{"class": "3", "probability": 0.999858}"#,
        got
    ));
    assert!(same_output(r#"{"class":"3",...}"#, got));
    assert!(!same_output(r#"{"class":"4","probability":0.999858}"#, got));
    assert!(!same_output(r#"{"class":"3","probability":0.9}"#, got));
    assert!(!same_output(r#"{"class":"3"}"#, got));
    assert!(same_output("[[ 2.5  7.  11.5]]", "[[ 2.5  7.  11.5]]\n"));
}

/// README.md, then docs/*.md in name order.
fn pages() -> Vec<PathBuf> {
    let root = repo();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    std::iter::once(root.join("README.md"))
        .chain(docs)
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fenced blocks of a page, with the comment before each and a
/// `python` block's output block attached.
fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let name = page.strip_prefix(repo()).unwrap().display().to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks: Vec<Block> = Vec::new();
    let mut last_block_end = None;
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = lines[i].len() - lines[i].trim_start().len();
        let start = i;
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].trim_start().starts_with("```") {
            body.push(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
            i += 1;
        }
        let before = lines[..start].iter().rev().find(|l| !l.trim().is_empty());
        let block = Block {
            at: format!("{name}:{}", start + 1),
            lang: lang.trim().to_string(),
            text: body.join("\n") + "\n",
            directive: before
                .filter(|l| l.trim_start().starts_with("<!--"))
                .map(|l| l.trim().to_string()),
            output: None,
        };
        // A `text` block right after a `python` one is what it prints.
        let follows = last_block_end
            .is_some_and(|end| lines[end + 1..start].iter().all(|l| l.trim().is_empty()));
        match blocks.last_mut() {
            Some(prev) if follows && prev.lang == "python" && block.lang == "text" => {
                prev.output = Some(block.text)
            }
            _ => blocks.push(block),
        }
        last_block_end = Some(i);
        i += 1;
    }
    blocks
}

/// Whether a block is an example: it calls the server with curl or a
/// client, or runs `ortserve check`.
fn is_example(block: &Block) -> bool {
    let clients = ["tritonclient", "kserve", "requests", "grpc", "openai"];
    block.text.contains("curl ")
        || block.text.contains("$ ortserve check")
        || (block.lang == "python" && clients.iter().any(|c| block.text.contains(c)))
}

/// Reads the block's directive; an unknown one, or an excuse without a
/// reason, is an error (a block must run or say why not).
fn plan(block: &Block) -> Result<Plan, String> {
    let comment = block.directive.as_deref().unwrap_or_default();
    let inner = comment
        .trim_start_matches("<!--")
        .trim_end_matches("-->")
        .trim();
    if let Some(reason) = inner.strip_prefix("not-run:") {
        return match reason.trim().is_empty() {
            true => Err(format!("{}: `not-run:` needs a reason", block.at)),
            false => Ok(Plan::Excused),
        };
    }
    // Never run cluster commands: a writer's kubeconfig may name a real cluster.
    if ["kubectl ", "helm "].iter().any(|c| block.text.contains(c)) {
        return Err(format!(
            "{}: talks to a cluster: excuse it with `<!-- not-run: REASON -->`",
            block.at
        ));
    }
    match inner.strip_prefix("example:").map(str::trim) {
        None => Ok(Plan::Run(Setup::Demo)),
        Some("server=demo") => Ok(Plan::Run(Setup::Demo)),
        Some("server=test-models") => Ok(Plan::Run(Setup::TestModels)),
        Some("server=text-generation") => Ok(Plan::Run(Setup::TextGeneration)),
        Some(other) => Err(format!("{}: unknown example directive {other:?}", block.at)),
    }
}

/// The commands of a block, each with its expected output.
fn steps_of(block: &Block) -> Vec<Step> {
    let step = |command: String, expected: Option<String>| Step {
        at: block.at.clone(),
        command,
        expected,
    };
    if block.lang == "python" {
        let command = format!("python - <<'PYTHON'\n{}PYTHON", block.text);
        return vec![step(command, block.output.clone())];
    }
    let session = block.lang == "console";
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for line in block.text.lines() {
        if continued {
            let last = steps.last_mut().unwrap();
            last.command.push('\n');
            last.command.push_str(line);
        } else if let Some(command) = line.strip_prefix("$ ").filter(|_| session) {
            steps.push(step(command.to_string(), Some(String::new())));
        } else if session {
            let last = steps
                .last_mut()
                .unwrap_or_else(|| panic!("{}: output before the first `$`", block.at));
            let expected = last.expected.get_or_insert_with(String::new);
            expected.push_str(line);
            expected.push('\n');
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            steps.push(step(line.to_string(), None));
        }
        continued = line.ends_with('\\');
    }
    for step in &mut steps {
        step.expected = step.expected.take().filter(|e| !e.trim().is_empty());
    }
    steps
}

/// Starts the server a group of steps needs and runs them in order; the
/// failures, one message each.
async fn run_steps(setup: Setup, steps: &[Step]) -> Vec<String> {
    let store = Store::new();
    let server = start(setup, &store).await;
    let addresses = [
        ("localhost:8080", host_port(&server.base)),
        ("localhost:8081", host_port(&server.management_url())),
        (
            "localhost:8082",
            host_port(server.metrics_url().trim_end_matches("/metrics")),
        ),
        ("localhost:7070", server.grpc_address()),
        ("localhost:7071", server.grpc_management_address()),
    ];
    let stubs = torchserve_stubs(steps);
    let mut failures = Vec::new();
    for step in steps {
        let mut command = step.command.clone();
        for (shown, real) in &addresses {
            command = command.replace(shown, real);
        }
        if let Err(error) = run_step(
            &command,
            step.expected.as_deref(),
            stubs.as_ref().map(|d| d.path()),
        ) {
            failures.push(format!("{} `{}`: {error}", step.at, step.command));
        }
    }
    failures
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

async fn start(setup: Setup, store: &Store) -> Server {
    let (launch, model, versions) = match setup {
        Setup::Demo => {
            let launch = Launch::default()
                .arg("--model-store")
                .arg(&demo_dir().join("model-store").display().to_string())
                .arg("--models")
                .arg("digits=digits.mar,digits=digits_v2");
            (launch, "digits", ["1.0", "2.0"])
        }
        Setup::TestModels => {
            let archives = [
                ("linear.mar", "linear", "1.0"),
                ("linear_v2.mar", "linear", "2.0"),
                ("squeezenet.mar", "squeezenet", "1.0"),
            ];
            for (file, name, version) in archives {
                store.mar(file, &Manifest::new(name, version), "linear", &[]);
            }
            store.file("multi_io.onnx", &model_bytes("multi_io"));
            let models = "linear.mar,linear_v2.mar,multi_io.onnx";
            let launch = Launch::store(store, models).arg("--enable-model-api");
            (launch, "linear", ["1.0", "2.0"])
        }
        Setup::TextGeneration => {
            for entry in std::fs::read_dir(models_dir().join("tiny_lm")).unwrap() {
                let path = entry.unwrap().path();
                let file = path.file_name().unwrap().to_string_lossy();
                store.file(&format!("tiny_lm/{file}"), &std::fs::read(&path).unwrap());
            }
            return Server::healthy(Launch::store(store, "tiny_lm")).await;
        }
    };
    let server = Server::healthy(launch).await;
    // Examples call non-default versions, which /ping does not wait for.
    server.wait_versions_ready(model, &versions).await;
    server
}

/// TorchServe's gRPC stubs, generated as its docs do, when a step imports
/// them; the directory goes on `PYTHONPATH`.
fn torchserve_stubs(steps: &[Step]) -> Option<tempfile::TempDir> {
    if !steps.iter().any(|s| s.command.contains("_pb2")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display();
    let generated = Command::new(python())
        .current_dir(repo())
        .args(["-m", "grpc_tools.protoc", "-Iproto/torchserve", "-Iproto"])
        .arg(format!("--python_out={out}"))
        .arg(format!("--grpc_python_out={out}"))
        .args([
            "proto/torchserve/inference.proto",
            "proto/torchserve/management.proto",
        ])
        .status()
        .expect("run grpc_tools.protoc");
    assert!(generated.success(), "grpc_tools.protoc failed");
    Some(dir)
}

/// Runs one command with bash in the repository root; checks its output,
/// or, shown without output, that it succeeded.
fn run_step(command: &str, expected: Option<&str>, stubs: Option<&Path>) -> Result<(), String> {
    // Without expected output, an HTTP error must fail the command.
    let fail = if expected.is_none() {
        "--fail-with-body"
    } else {
        ""
    };
    let script = format!("curl() {{ command curl -sS --max-time 30 {fail} \"$@\"; }}\n{command}");
    // `ortserve` is the binary under test; `python`, the venv's.
    let ortserve_bin = Path::new(env!("CARGO_BIN_EXE_ortserve")).parent().unwrap();
    let venv_bin = python().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:{}",
        ortserve_bin.display(),
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("timeout");
    bash.args(["60", "bash", "-c", &script])
        .current_dir(repo())
        .env("PATH", path);
    if let Some(stubs) = stubs {
        bash.env("PYTHONPATH", stubs);
    }
    let output = bash.output().expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{}\n{stdout}{stderr}", output.status));
    }
    match expected {
        Some(want) if !same_output(want, &stdout) => Err(format!(
            "printed\n{}\nbut the docs show\n{want}",
            shorten(&stdout)
        )),
        _ => Ok(()),
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(2000) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A piece of output: a number, any other character, or `...` (anything).
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Number(f64),
    Char(&'a str),
    Any,
}

/// Whether `got` is what the docs show: whitespace ignored, numbers equal
/// to 1e-4 (relative above 1), `...` matching any run of output.
fn same_output(want: &str, got: &str) -> bool {
    let (want, got) = (tokens(want), tokens(got));
    let same = |w: &Token, g: &Token| match (w, g) {
        (Token::Number(w), Token::Number(g)) => (w - g).abs() <= 1e-4 * w.abs().max(1.0),
        _ => w == g,
    };
    // Glob matching: on a mismatch, let the last `...` swallow one more token.
    let (mut w, mut g, mut star) = (0, 0, None);
    while g < got.len() {
        if want.get(w) == Some(&Token::Any) {
            star = Some((w, g));
            w += 1;
        } else if want.get(w).is_some_and(|t| same(t, &got[g])) {
            w += 1;
            g += 1;
        } else if let Some((star_w, star_g)) = star {
            star = Some((star_w, star_g + 1));
            (w, g) = (star_w + 1, star_g + 1);
        } else {
            return false;
        }
    }
    want[w..].iter().all(|t| *t == Token::Any)
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let length = if c.is_whitespace() {
            c.len_utf8()
        } else if rest.starts_with("...") {
            tokens.push(Token::Any);
            3
        } else if let Some(n) = number_length(rest) {
            tokens.push(Token::Number(rest[..n].parse().unwrap()));
            n
        } else {
            tokens.push(Token::Char(&rest[..c.len_utf8()]));
            c.len_utf8()
        };
        rest = &rest[length..];
    }
    tokens
}

/// The length of the number `text` starts with: `-?D+(.D*)?(e[+-]?D+)?`
/// (`7.` as numpy prints it), leaving a `...` that follows alone.
fn number_length(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut end = usize::from(bytes[0] == b'-');
    let whole = digits(end);
    if whole == 0 {
        return None;
    }
    end += whole;
    if bytes.get(end) == Some(&b'.') && !text[end..].starts_with("...") {
        end += 1 + digits(end + 1);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        let exponent = digits(end + 1 + sign);
        if exponent > 0 {
            end += 1 + sign + exponent;
        }
    }
    Some(end)
}
