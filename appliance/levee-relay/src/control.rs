//! The control socket: how `levee queue`, `lists`, `status`, `train` and `eval` reach a
//! running engine. sled admits one process, so while the engine runs the CLI asks it
//! instead of opening the store.
//!
//! The socket is `<data_dir>/control.sock`, mode 0600, and a peer must be the socket's
//! owner (the engine's user) or root. The protocol is one JSON [`Request`] per line and
//! one JSON [`Reply`] line for each, on one connection, until the client closes it.
//! A request line may be at most [`MAX_REQUEST`] bytes; a peer that stays silent for
//! [`IDLE`] is dropped, and no connection lives past [`CONNECTION_DEADLINE`].

use crate::{Engine, RelayError, TrainProgress, BAYES_BLOB, RULE_WEIGHTS_BLOB};
use base64::Engine as _;
use levee_store::{QueueEntry, StoredListEntry};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::io::{BufRead, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "control.sock";
/// The longest request line the engine reads (a training batch is the large one).
pub const MAX_REQUEST: usize = 32 << 20;
/// The longest reply line a client reads: a reply holds at most the model or the queue.
pub const MAX_REPLY: usize = 1 << 30;
/// How long the engine waits for the next request line, or for a reply to be taken.
pub const IDLE: Duration = Duration::from_secs(60);
/// No connection lives longer, however busy (a long training run takes several).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(3600);
/// Commands served at once; more get a "busy" reply rather than a queue.
const MAX_CONNECTIONS: usize = 4;
/// Who `list_add` records as having added an entry.
const ADDED_BY: &str = "cli";

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Raw bytes, carried in JSON as standard base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Every queue entry, held ones included.
    Queue,
    /// Every allow/block entry as stored.
    Lists,
    /// `entry` in the lists' text form, e.g. `block sender-domain spam.example`.
    ListAdd {
        entry: String,
        note: String,
    },
    ListRemove {
        id: u64,
    },
    /// Learns each message with one label, through the engine's own training path.
    Train {
        spam: bool,
        messages: Vec<Bytes>,
    },
    /// The stored model and the rules' fitted weights, for `levee eval`.
    Model,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Queue {
        entries: Vec<QueueEntry>,
    },
    Lists {
        entries: Vec<StoredListEntry>,
    },
    ListAdded {
        id: u64,
    },
    ListRemoved {
        removed: bool,
    },
    /// `learned` messages of this batch; the model's message counts after it.
    Trained {
        learned: usize,
        model_spam: u64,
        model_ham: u64,
    },
    Model {
        bayes: Option<Bytes>,
        rule_weights: Option<Bytes>,
    },
    Error {
        message: String,
    },
}

/// What `levee status` shows; the same whether read from the engine or the store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Queue entries awaiting delivery (not held).
    pub queued: usize,
    /// Queue entries held in quarantine.
    pub held: usize,
    pub lists: usize,
    pub model_spam: u64,
    pub model_ham: u64,
}

impl Status {
    /// Counts what the store holds; the model counts come from the caller, who has the model.
    pub fn of(store: &levee_store::Store, model: (u64, u64)) -> Result<Status, RelayError> {
        let queue = store.queue_all()?;
        let held = queue.iter().filter(|e| e.held).count();
        Ok(Status {
            queued: queue.len() - held,
            held,
            lists: store.list_all()?.len(),
            model_spam: model.0,
            model_ham: model.1,
        })
    }
}

/// Binds the socket and serves it until `shutdown`; spawned beside the relay by whoever runs
/// the engine. A socket that cannot be bound is logged and left out: mail matters more than
/// the CLI, which then says the engine does not answer.
pub fn start(
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let path = socket_path(&engine.config().data_dir);
    match bind(&path) {
        Ok((listener, owner)) => {
            info!(path = %path.display(), "control socket listening");
            Some(tokio::spawn(serve(engine, listener, path, owner, shutdown)))
        }
        Err(e) => {
            error!(path = %path.display(), error = %e, "no control socket; the CLI cannot reach this engine");
            None
        }
    }
}

/// A socket left by an engine that died is removed first (the store lock the engine already
/// holds means no other engine uses this data directory). Returns the owner's uid.
fn bind(path: &Path) -> Result<(UnixListener, u32), RelayError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(path)?;
    // Between bind and chmod the umask decides; the peer check below closes that gap.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(path)?.uid();
    Ok((listener, owner))
}

async fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // The guard `wait_for` returns is not `Send`; it must not live across a poll.
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let engine = engine.clone();
                    let slot = slots.clone().try_acquire_owned();
                    conns.spawn(async move {
                        let _slot = match slot {
                            Ok(s) => s,
                            Err(_) => return refuse(stream, "the engine is serving other commands; try again").await,
                        };
                        let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection(&engine, stream, owner)).await;
                    });
                }
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    // An accept error (out of descriptors) repeats at once; do not spin on it.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Commands under way end with the engine; their clients see the connection close.
    conns.shutdown().await;
    let _ = std::fs::remove_file(&path);
    info!("control socket closed");
}

async fn refuse(mut stream: UnixStream, message: &str) {
    let line = encode(&Reply::Error { message: message.to_string() });
    let _ = tokio::time::timeout(IDLE, stream.write_all(&line)).await;
}

fn encode(reply: &Reply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|e| {
        // Only a non-string map key could fail here, and these types have none.
        format!("{{\"reply\":\"error\",\"message\":\"reply not encodable: {e}\"}}").into_bytes()
    });
    line.push(b'\n');
    line
}

async fn connection(engine: &Arc<Engine>, stream: UnixStream, owner: u32) {
    let allowed = stream.peer_cred().map(|c| c.uid() == owner || c.uid() == 0);
    if !matches!(allowed, Ok(true)) {
        warn!(peer = ?stream.peer_cred().ok(), "control socket: peer refused");
        return refuse(stream, "not allowed: run this as the engine's user or as root").await;
    }
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut read).take(MAX_REQUEST as u64 + 1);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let too_long = line.len() > MAX_REQUEST;
        let reply = if too_long {
            Reply::Error { message: format!("request over {MAX_REQUEST} bytes") }
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => handle(engine, request).await,
                Err(e) => Reply::Error { message: format!("bad request: {e}") },
            }
        };
        match tokio::time::timeout(IDLE, write.write_all(&encode(&reply))).await {
            Ok(Ok(())) if !too_long => {}
            // The rest of an over-long line is unread: the stream cannot be re-synchronised.
            _ => return,
        }
    }
}

/// Runs one request on the engine's public methods; store reads go to a blocking thread.
async fn handle(engine: &Arc<Engine>, request: Request) -> Reply {
    let result = match request {
        Request::Train { spam, messages } => {
            let messages: Vec<Vec<u8>> = messages.into_iter().map(|b| b.0).collect();
            let learned = messages.len();
            let progress = TrainProgress::new(learned);
            engine
                .train_corpus(messages, spam, progress)
                .await
                .map(|(model_spam, model_ham)| Reply::Trained { learned, model_spam, model_ham })
        }
        other => {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || blocking(&engine, other))
                .await
                .unwrap_or_else(|e| Err(RelayError::Io(std::io::Error::other(e))))
        }
    };
    result.unwrap_or_else(|e| Reply::Error { message: e.to_string() })
}

fn blocking(engine: &Engine, request: Request) -> Result<Reply, RelayError> {
    let store = engine.store();
    Ok(match request {
        Request::Status => Reply::Status(Status::of(store, engine.model_counts())?),
        Request::Queue => Reply::Queue { entries: store.queue_all()? },
        Request::Lists => Reply::Lists { entries: store.list_all()? },
        Request::ListAdd { entry, note } => match entry.parse() {
            Ok(parsed) => Reply::ListAdded { id: engine.add_list_entry(&parsed, &note, ADDED_BY)? },
            Err(why) => Reply::Error { message: format!("{entry:?}: {why}") },
        },
        Request::ListRemove { id } => Reply::ListRemoved { removed: engine.remove_list_entry(id)? },
        Request::Model => Reply::Model {
            bayes: store.blob_get(BAYES_BLOB)?.map(Bytes),
            rule_weights: store.blob_get(RULE_WEIGHTS_BLOB)?.map(Bytes),
        },
        Request::Train { .. } => {
            Reply::Error { message: "training is not a blocking request".into() }
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: unreadable reply: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("the engine closed the control connection (is it stopping?)")]
    Closed,
    #[error("control socket: reply over {MAX_REPLY} bytes")]
    TooLarge,
    #[error("the engine refused: {0}")]
    Refused(String),
}

/// The CLI's end: blocking, since the commands that use it run no runtime.
#[derive(Debug)]
pub struct Client {
    read: std::io::BufReader<std::os::unix::net::UnixStream>,
    write: std::os::unix::net::UnixStream,
}

impl Client {
    /// Connects; the error's kind tells "no engine" (`NotFound`, `ConnectionRefused`) from
    /// "an engine you may not reach" (`PermissionDenied`).
    pub fn connect(path: &Path, wait: Duration) -> std::io::Result<Client> {
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(IDLE))?;
        Ok(Client { read: std::io::BufReader::new(stream.try_clone()?), write: stream })
    }

    /// Sends one request and reads its reply; an engine's `Error` reply becomes `Refused`.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ControlError> {
        use std::io::Read;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.write.write_all(&line)?;
        let mut reply = Vec::new();
        let n = (&mut self.read).take(MAX_REPLY as u64 + 1).read_until(b'\n', &mut reply)?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        if reply.len() > MAX_REPLY {
            return Err(ControlError::TooLarge);
        }
        match serde_json::from_slice(&reply)? {
            Reply::Error { message } => Err(ControlError::Refused(message)),
            ok => Ok(ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_survive_the_line_protocol() {
        let raw: Vec<u8> = (0..=255).collect();
        let req = Request::Train { spam: true, messages: vec![Bytes(raw.clone())] };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'), "one request is one line");
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
    }

    /// Every wait in these tests ends by then.
    const WAIT: Duration = Duration::from_secs(30);

    async fn line(read: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, read.read_line(&mut line)).await.unwrap().unwrap();
        line
    }

    #[tokio::test]
    async fn bad_and_oversized_requests_get_an_error_and_shutdown_removes_the_socket() {
        let dir = std::env::temp_dir().join(format!("levee-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "hostname = \"mx.example.test\"\ndata_dir = \"{}\"\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n\
             tls = false\n[rules]\nspamassassin = false\n",
            dir.display()
        );
        let engine = Engine::open(levee_config::Config::parse(&text, "t").unwrap()).unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = start(engine, stopped).expect("the socket binds");
        let path = socket_path(&dir);

        // A line that is not a request is answered, and the connection goes on.
        let (read, mut write) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"nonsense\n{\"op\":\"status\"}\n").await.unwrap();
        assert!(line(&mut read).await.contains("bad request"));
        let status: Reply = serde_json::from_str(&line(&mut read).await).unwrap();
        assert_eq!(status, Reply::Status(Status::default()));

        // An over-long line is refused and the connection closed (it cannot be re-synchronised).
        let (read, mut write) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut read = BufReader::new(read);
        let big = vec![b'x'; MAX_REQUEST + 1];
        tokio::time::timeout(WAIT, write.write_all(&big)).await.unwrap().unwrap();
        assert!(line(&mut read).await.contains(&format!("request over {MAX_REQUEST} bytes")));
        assert_eq!(line(&mut read).await, "", "closed after the refusal");

        stop.send(true).unwrap();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_requests_and_fields_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_everything"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"list_remove","id":1,"x":2}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"list_remove","id":7}"#).unwrap(),
            Request::ListRemove { id: 7 }
        );
    }
}
