//! Connections on one listening socket, HTTP/1.1 ([`serve`]) or HTTP/2 with
//! prior knowledge, as gRPC's clients connect ([`serve_http2`]): the accept
//! loop and what bounds each connection's life, so that sockets which send
//! nothing (or send slowly) cannot pin the server.
//!
//! * **A cap** (`max_connections`): at the cap, the idle connection that has
//!   waited longest is closed to make room — an idle keep-alive connection,
//!   or one that has not finished its request headers — so a flood of such
//!   sockets cannot lock out a probe's new connection. Only when every
//!   connection is running a request do new ones wait, in the kernel's
//!   accept backlog, for one to finish.
//! * **Header-read timeout**: a new connection must deliver its first
//!   request's headers within `header_read_timeout` of being accepted, and a
//!   kept-alive one within that time of the first byte of its next request.
//! * **Idle timeout**: a kept-alive connection with no request for
//!   `keep_alive_timeout` is closed.
//! * **Send timeout**: an answer whose bytes have waited on a client that
//!   takes none of them for `send_timeout` (the setting
//!   `request_body_timeout`) has its connection closed: a client that asks
//!   and never reads would otherwise hold it in flight for good. On
//!   HTTP/1.1 the socket's writes are watched; on HTTP/2 each answer's
//!   frames, which wait on the client's flow-control window rather than
//!   the socket, so one stream the client starves is seen however freely
//!   its other streams move.
//! * **Lingering close**: when the server closes a connection after an answer
//!   (say a 413 for a body it will not read), it shuts its side down and
//!   reads, for a bounded time and size, what the client is still sending, so
//!   the client reads the answer instead of a reset.
//! * **Graceful shutdown**: when `shutdown` resolves, nothing more is
//!   accepted, idle connections close, and requests in flight finish.
//!
//! On HTTP/2 a request is a stream, in flight until its answer's last frame
//! (a gRPC answer's trailers) is sent. The header timeout applies to a new
//! connection's first stream and the idle timeout between streams; a
//! connection past either, or told to shut down, is sent a GOAWAY and
//! closed when its streams are done, or [`GOODBYE_TIME`] after an idle one
//! was told (h2's goodbye waits for the client to answer a PING). A stream
//! whose client sends its messages when it likes (a bidirectional call)
//! is not in flight while it waits for the next one ([`ClientWaits`]): a
//! connection holding only such streams is idle, so the idle timeout and
//! eviction close it, where it would otherwise be pinned for good.
//!
//! It knows nothing of routes: it serves the [`App`] or the service it is
//! given.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};

use super::app::{Answer, App};
use super::body::{BodyMemory, UntilSent};
use super::request::Streamed;

/// How long a closing connection keeps reading what its client still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much it reads (and drops) at most while lingering.
const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// How long an idle HTTP/2 connection that was sent a GOAWAY may take to
/// close before its socket is closed anyway.
const GOODBYE_TIME: Duration = Duration::from_secs(2);
/// How often a full table is searched again for an idle connection to close.
const EVICT_RETRY: Duration = Duration::from_millis(100);
/// At most one "connection cap reached" warning per this long.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// How many rounds of answers' waits a connection tells apart ([`SendWatch`]).
const SEND_ROUNDS: usize = 8;
/// An HTTP/2 answer's data is given to hyper in pieces of at most this
/// much ([`HeldUntilSent`]): h2's largest frame by default, so the frames
/// on the wire are the same.
const ANSWER_PIECE: usize = 16 * 1024;

/// Bounds on the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// How long an answer's write may wait on its client.
    pub send_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let serve_one = move |stream, state| {
        let app = app.clone();
        async move { run(stream, app, &state, limits).await }
    };
    accept(listener, limits, shutdown, serve_one).await;
}

/// Serves HTTP/2 (h2c, prior knowledge) on `listener`, with the same bounds
/// and shutdown as [`serve`]: each connection's streams are answered by
/// the service `service_for` makes for it, given the connection's
/// [`ClientWaits`]; their answers' bytes are charged to `memory` until
/// sent.
pub async fn serve_http2<S, B>(
    listener: TcpListener,
    service_for: impl Fn(ClientWaits) -> S + Clone + Send + 'static,
    limits: ConnectionLimits,
    memory: Arc<BodyMemory>,
    shutdown: impl Future<Output = ()>,
) where
    S: StreamService<B>,
    B: StreamBody,
{
    let serve_one = move |stream, state: Arc<ConnectionState>| {
        let service = TrackedStreams {
            service: service_for(ClientWaits(state.clone())),
            state: state.clone(),
            memory: memory.clone(),
        };
        async move { run_http2(stream, service, &state, limits).await }
    };
    accept(listener, limits, shutdown, serve_one).await;
}

/// What [`serve_http2`] serves: a service answering each stream, on any
/// of the runtime's threads.
pub trait StreamService<B>:
    hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<B>,
        Error = Infallible,
        Future: Unpin + Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> StreamService<B> for S where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
            Future: Unpin + Send + 'static,
        > + Send
        + 'static
{
}

/// A connection's mark for a stream that waits on its client: while a
/// [`WaitingOnClient`] from it lives, that stream does not hold the
/// connection in flight. For a stream whose client sends messages when it
/// likes, between them; not for a call whose one message is late, which is
/// bounded by `request_body_timeout` instead.
#[derive(Clone)]
pub struct ClientWaits(Arc<ConnectionState>);

impl ClientWaits {
    /// The stream waits on its client until the mark is dropped.
    pub fn waiting(&self) -> WaitingOnClient {
        self.0.request_finished();
        WaitingOnClient(self.0.clone())
    }
}

/// A stream waiting on its client; dropped when the client's next message
/// comes (or the stream ends), which puts the stream back in flight.
pub struct WaitingOnClient(Arc<ConnectionState>);

impl Drop for WaitingOnClient {
    fn drop(&mut self) {
        // Back in flight: the stream's own count is dropped after this one
        // whichever way the stream ends, so the two always pair.
        self.0.request_started();
    }
}

/// The body of a [`StreamService`]'s answer.
pub trait StreamBody:
    HttpBody<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Unpin
    + Send
    + 'static
{
}

impl<B> StreamBody for B where
    B: HttpBody<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Unpin
        + Send
        + 'static
{
}

/// The accept loop: each connection gets a slot in the table and a task
/// running `serve_one` on it.
async fn accept<F, Served>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    serve_one: F,
) where
    F: Fn(TcpStream, Arc<ConnectionState>) -> Served,
    Served: Future<Output = ()> + Send + 'static,
{
    let table = Arc::new(ConnectionTable::new(limits.max_connections));
    // Each connection's task holds a receiver until it ends, so the
    // channel closes when the last connection has.
    let (all_closed, open) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(&table, &error).await;
                    continue;
                }
            },
        };
        // Room is made only for a connection that is here: at the cap, at
        // most this one waits (and the rest in the kernel's backlog).
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = table.free_slot() => slot,
        };
        // Answers are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        let connection = table.open(slot);
        let served = serve_one(stream, connection.state.clone());
        let open = open.clone();
        tokio::spawn(async move {
            served.await;
            drop((connection, open));
        });
    }
    drop(listener);
    drop(open);
    table.stop_all();
    all_closed.closed().await;
}

/// Out of descriptors (or another accept error): make room if the cause is
/// ours, and do not spin.
async fn accept_failed(table: &ConnectionTable, error: &io::Error) {
    let out_of_descriptors = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_descriptors {
        table.warn_cap("the process is out of file descriptors");
        table.evict_oldest_idle();
    }
    let pause = if out_of_descriptors {
        EVICT_RETRY
    } else {
        Duration::from_millis(10)
    };
    tokio::time::sleep(pause).await;
}

/// Serves one connection until it closes, times out or is evicted.
async fn run(stream: TcpStream, app: App, state: &Arc<ConnectionState>, limits: ConnectionLimits) {
    let io = TokioIo::new(Watched {
        stream,
        state: state.clone(),
        waiting: None,
    });
    let service = Tracked {
        app,
        state: state.clone(),
    };
    let mut connection = http1::Builder::new().serve_connection(io, service);
    // One timer, never set further ahead than the header timeout, so it is
    // never later than the connection's deadline, whatever requests and
    // bytes do meanwhile; when it fires, the deadline is checked and the
    // timer moved. Requests themselves never touch it.
    let timer = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(timer);
    let mut interrupts = Interrupts {
        state,
        timer,
        timer_waker: None,
    };
    let mut sends = SendWatch::new(limits.send_timeout, Instant::now());
    loop {
        let event = std::future::poll_fn(|cx| match connection.poll_without_shutdown(cx) {
            Poll::Ready(done) => Poll::Ready(Interrupt::Closed {
                clean: done.is_ok(),
            }),
            Poll::Pending => interrupts.poll(cx),
        })
        .await;
        match event {
            Interrupt::Closed { clean } => {
                if clean {
                    linger(connection.into_parts().io.into_inner().stream).await;
                }
                return;
            }
            Interrupt::Evicted => return,
            Interrupt::Timer => {
                let now = Instant::now();
                if sends.stalled(state, now) {
                    tracing::debug!(
                        "closing a connection whose client took none of its answer in time"
                    );
                    return;
                }
                let check = now + limits.header_read_timeout;
                match state.deadline(&limits) {
                    Some(at) if at <= now => {
                        tracing::debug!(
                            "closing a connection that sent no complete request in time"
                        );
                        return;
                    }
                    Some(at) => interrupts.move_timer(at.min(check)),
                    None => interrupts.move_timer(check),
                }
            }
            Interrupt::Stopping => {
                if state.is_idle() {
                    return;
                }
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
    }
}

/// Serves one HTTP/2 connection until it closes, times out or is evicted.
async fn run_http2<S, B>(
    stream: TcpStream,
    service: TrackedStreams<S>,
    state: &Arc<ConnectionState>,
    limits: ConnectionLimits,
) where
    S: StreamService<B>,
    B: StreamBody,
{
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // gRPC's clients read no `date`; grpc-go's and grpc-java's servers
        // send none. Writing it cost about 1,000 instructions a call.
        .auto_date_header(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let timer = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(timer);
    let mut interrupts = Interrupts {
        state,
        timer,
        timer_waker: None,
    };
    let mut closing = false;
    let mut sends = SendWatch::new(limits.send_timeout, Instant::now());
    loop {
        let event = after_other_streams(state, |cx| match connection.as_mut().poll(cx) {
            Poll::Ready(_) => Poll::Ready(Interrupt::Closed { clean: true }),
            Poll::Pending => interrupts.poll(cx),
        })
        .await;
        let now = Instant::now();
        let check = now + limits.header_read_timeout;
        let say_goodbye = match event {
            Interrupt::Closed { .. } | Interrupt::Evicted => return,
            Interrupt::Stopping => true,
            Interrupt::Timer if sends.stalled(state, now) => {
                tracing::debug!("closing an HTTP/2 connection whose client took no answer in time");
                return;
            }
            Interrupt::Timer => match state.deadline(&limits) {
                // Told to go, and no stream is left: its time is up.
                Some(_) if closing => return,
                Some(at) if at <= now => {
                    tracing::debug!("closing an HTTP/2 connection with no stream in time");
                    true
                }
                Some(at) => {
                    interrupts.move_timer(at.min(check));
                    false
                }
                None => {
                    interrupts.move_timer(check);
                    false
                }
            },
        };
        if say_goodbye && !closing {
            connection.as_mut().graceful_shutdown();
            closing = true;
            interrupts.move_timer(now + GOODBYE_TIME);
        }
    }
}

/// `poll`, run when the connection's task is woken, but while some other
/// stream is in flight only once every task already woken has had its
/// turn. An HTTP/2 connection writes what its streams have queued each
/// time it is polled, and each stream is a task of its own that wakes the
/// connection when its answer is queued: tokio runs a task woken that way
/// next, so eight calls that arrived together went out in eight writes,
/// one answer each. Going to the back of the queue first lets the other
/// answers join them: one write for all (see docs/performance.md, "HTTP/2
/// answers written together"). With no other stream in flight nothing
/// can join, and the detour (about 1,000 instructions) is not taken.
fn after_other_streams<T>(
    state: &ConnectionState,
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> impl Future<Output = T> {
    let mut queued_behind = false;
    std::future::poll_fn(move |cx| {
        if !queued_behind && state.in_flight.load(Ordering::Acquire) > 0 {
            queued_behind = true;
            // Woken while running, a tokio task is put at the back of its
            // run queue, as `yield_now` does.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        queued_behind = false;
        poll(cx)
    })
}

/// Whether some answer has waited on its client for `send_timeout`, as
/// seen at the connection's timer checks (at most `header_read_timeout`
/// apart), with no clock read on the answers' path. Waits are counted by
/// the round they began in; a round begins at the first check a quarter of
/// the timeout after the last one began, so a wait still counted in a
/// round has lasted at least since the next round began. One stalled
/// answer is so seen however freely the connection's others move: never
/// before the timeout, and at most a quarter timeout (or a check's
/// interval, if longer) and a check's interval after it.
struct SendWatch {
    timeout: Duration,
    round: usize,
    /// When each of the last [`SEND_ROUNDS`] rounds began.
    began: [Instant; SEND_ROUNDS],
}

impl SendWatch {
    fn new(timeout: Duration, now: Instant) -> SendWatch {
        SendWatch {
            timeout,
            round: 0,
            began: [now; SEND_ROUNDS],
        }
    }

    fn stalled(&mut self, state: &ConnectionState, now: Instant) -> bool {
        // The rounds before this one, newest first. The oldest is past the
        // timeout before its slot is reused: each round lasts at least a
        // quarter of it.
        let stalled = (1..SEND_ROUNDS)
            .filter_map(|age| self.round.checked_sub(age))
            .any(|round| {
                state.sends_waiting[round % SEND_ROUNDS].load(Ordering::Acquire) > 0
                    && now >= self.began[(round + 1) % SEND_ROUNDS] + self.timeout
            });
        if !stalled && now >= self.began[self.round % SEND_ROUNDS] + self.timeout / 4 {
            self.round += 1;
            self.began[self.round % SEND_ROUNDS] = now;
            state.send_round.store(self.round, Ordering::Release);
        }
        stalled
    }
}

/// What, besides its client, a connection's task wakes for.
enum Interrupt {
    /// The connection is done (`clean`: not broken or timed out by hyper).
    Closed { clean: bool },
    /// Chosen to make room for a new connection.
    Evicted,
    /// The timer fired: time to check the connection's deadline.
    Timer,
    /// The listener is shutting down.
    Stopping,
}

/// Eviction, shutdown and the deadline timer, checked cheaply. Each source
/// wakes the task when it fires: eviction and shutdown through the
/// connection's `waker`, the timer through the waker it was last polled
/// with. So a wake-up for the connection's own work (a request's bytes,
/// its answer, two or three a request) reads two flags and the timer's
/// state, and polls the timer only when it has fired or was moved: polling
/// a `Sleep`, a `Notified` and a `watch` receiver on every wake-up cost
/// about 800 instructions a request under callgrind.
struct Interrupts<'a> {
    state: &'a ConnectionState,
    timer: Pin<&'a mut Sleep>,
    /// The waker the timer holds; `None` once it is moved.
    timer_waker: Option<Waker>,
}

impl Interrupts<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Interrupt> {
        // Registered before the flags are read: a flag set after the read
        // wakes this waker.
        self.state.waker.register(cx.waker());
        if self.state.chosen.load(Ordering::Acquire) {
            return Poll::Ready(Interrupt::Evicted);
        }
        if self.state.stopping.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Interrupt::Stopping);
        }
        let armed = self
            .timer_waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if !armed || self.timer.is_elapsed() {
            self.timer_waker = Some(cx.waker().clone());
            if self.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Interrupt::Timer);
            }
        }
        Poll::Pending
    }

    fn move_timer(&mut self, at: Instant) {
        self.timer.as_mut().reset(at);
        self.timer_waker = None;
    }
}

/// Shuts the server's side down, then reads and drops what the client still
/// sends, within bounds, before the socket closes.
async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buffer = [0u8; 16 * 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// What the accept loop and a connection's tasks know of one connection.
struct ConnectionState {
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicUsize,
    /// No request has started yet: the header timeout runs from acceptance.
    fresh: AtomicBool,
    /// When the connection last became idle (accepted, or answered).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived, or [`NOT_STARTED`].
    head_started: AtomicU64,
    /// Answers waiting on the client (on HTTP/1.1 a write the socket did
    /// not take, on HTTP/2 a frame hyper has not sent on: it does once the
    /// client's window has room), by the round their wait began in.
    sends_waiting: [AtomicUsize; SEND_ROUNDS],
    /// The round a wait that begins now counts in; the connection's task
    /// moves it on ([`SendWatch`]).
    send_round: AtomicUsize,
    /// Chosen to make room (and so not chosen twice): the connection's
    /// task closes it.
    chosen: AtomicBool,
    /// The listener is shutting down: the task closes the connection once
    /// its requests are answered. Cleared when the task has seen it.
    stopping: AtomicBool,
    /// The connection's task, woken when either flag is set.
    waker: AtomicWaker,
    epoch: Instant,
}

const NOT_STARTED: u64 = u64::MAX;

impl ConnectionState {
    fn new(epoch: Instant) -> ConnectionState {
        let state = ConnectionState {
            in_flight: AtomicUsize::new(0),
            fresh: AtomicBool::new(true),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NOT_STARTED),
            sends_waiting: std::array::from_fn(|_| AtomicUsize::new(0)),
            send_round: AtomicUsize::new(0),
            chosen: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            epoch,
        };
        state.idle_since.store(state.now(), Ordering::Release);
        state
    }

    /// Milliseconds since the listener started.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// Not serving a request, and no byte of the next one has arrived.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NOT_STARTED
    }

    /// When the connection must have delivered a request's headers; `None`
    /// while a request is being served.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_since = self.idle_since.load(Ordering::Acquire);
        if self.fresh.load(Ordering::Acquire) {
            return Some(self.at(idle_since) + limits.header_read_timeout);
        }
        match self.head_started.load(Ordering::Acquire) {
            NOT_STARTED => Some(self.at(idle_since) + limits.keep_alive_timeout),
            started => Some(self.at(started) + limits.header_read_timeout),
        }
    }

    /// Bytes arrived: if idle, the next request's header clock starts.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NOT_STARTED
        {
            self.head_started.store(self.now(), Ordering::Release);
        }
    }

    /// An answer waits on the client: returns the round it is counted
    /// in, to give back to [`send_wait_over`](Self::send_wait_over).
    fn send_waits(&self) -> usize {
        let round = self.send_round.load(Ordering::Acquire) % SEND_ROUNDS;
        self.sends_waiting[round].fetch_add(1, Ordering::AcqRel);
        round
    }

    /// An answer's wait ended: the client took bytes, or the answer went.
    fn send_wait_over(&self, round: usize) {
        self.sends_waiting[round].fetch_sub(1, Ordering::AcqRel);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.fresh.store(false, Ordering::Release);
        self.head_started.store(NOT_STARTED, Ordering::Release);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Release);
        }
    }

    fn evict(&self) {
        self.chosen.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The open connections of one listener and the slots they hold.
struct ConnectionTable {
    slots: Arc<Semaphore>,
    open: Mutex<Vec<(u64, Arc<ConnectionState>)>>,
    next_id: AtomicU64,
    epoch: Instant,
    last_cap_warning: Mutex<Option<Instant>>,
}

/// An open connection's entry; dropping it frees the slot.
struct OpenConnection {
    id: u64,
    state: Arc<ConnectionState>,
    table: Arc<ConnectionTable>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = open.iter().position(|(id, _)| *id == self.id) {
            open.swap_remove(index);
        }
    }
}

impl ConnectionTable {
    fn new(max_connections: usize) -> ConnectionTable {
        ConnectionTable {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            last_cap_warning: Mutex::new(None),
        }
    }

    /// A slot for the next connection: at once if one is free, else after
    /// closing the longest-idle connection, else when a connection ends.
    async fn free_slot(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return slot;
            }
            self.warn_cap("max_connections reached");
            self.evict_oldest_idle();
            let wait = self.slots.clone().acquire_owned();
            if let Ok(Ok(slot)) = tokio::time::timeout(EVICT_RETRY, wait).await {
                return slot;
            }
        }
    }

    fn open(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> OpenConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState::new(self.epoch));
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.push((id, state.clone()));
        OpenConnection {
            id,
            state,
            table: self.clone(),
            _slot: slot,
        }
    }

    /// Closes the connection that has been idle longest, if any is idle.
    fn evict_oldest_idle(&self) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = open
            .iter()
            .map(|(_, state)| state)
            .filter(|state| {
                state.in_flight.load(Ordering::Acquire) == 0
                    && !state.chosen.load(Ordering::Acquire)
            })
            .min_by_key(|state| state.idle_since.load(Ordering::Acquire));
        if let Some(state) = oldest {
            state.evict();
        }
    }

    /// Tells every open connection the listener is shutting down.
    fn stop_all(&self) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (_, state) in open.iter() {
            state.stop();
        }
    }

    fn warn_cap(&self, what: &str) {
        let mut last = self
            .last_cap_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                "{what}: closing idle connections to admit new ones, and holding new ones while every connection runs a request (raise max_connections or the file descriptor limit)"
            );
        }
    }
}

/// The app, counting the connection's requests in flight.
struct Tracked {
    app: App,
    state: Arc<ConnectionState>,
}

/// Marks the request finished however its future ends.
struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = TrackedAnswer;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.state.request_started();
        TrackedAnswer {
            answer: self.app.answer(request.map(Body::new)),
            in_flight: Some(InFlight(self.state.clone())),
        }
    }
}

/// The app's answer, holding the request in flight until it is ready: a
/// named future rather than a boxed `async` block, one allocation less on
/// every request.
struct TrackedAnswer {
    answer: Answer,
    in_flight: Option<InFlight>,
}

impl Future for TrackedAnswer {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        let in_flight = self.in_flight.take();
        // A streamed answer is in flight until its last byte: a drain waits
        // for it, and no idle timeout cuts it.
        if response.extensions().get::<Streamed>().is_some() {
            let held = move || drop(in_flight);
            return Poll::Ready(Ok(response.map(|body| UntilSent::wrap(body, held))));
        }
        drop(in_flight);
        Poll::Ready(Ok(response))
    }
}

/// An HTTP/2 service, counting the connection's streams in flight and
/// charging their answers to the memory bodies and answers share.
struct TrackedStreams<S> {
    service: S,
    state: Arc<ConnectionState>,
    memory: Arc<BodyMemory>,
}

impl<S, B> hyper::service::Service<hyper::Request<Incoming>> for TrackedStreams<S>
where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = Infallible,
        >,
    S::Future: Unpin,
{
    type Response = hyper::Response<HeldUntilSent<B>>;
    type Error = Infallible;
    type Future = TrackedStream<S::Future>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.state.request_started();
        TrackedStream {
            answer: self.service.call(request),
            in_flight: Some(InFlight(self.state.clone())),
            memory: self.memory.clone(),
        }
    }
}

/// A stream's answer, whose body then holds the stream in flight.
struct TrackedStream<F> {
    answer: F,
    in_flight: Option<InFlight>,
    memory: Arc<BodyMemory>,
}

impl<F, B> Future for TrackedStream<F>
where
    F: Future<Output = Result<hyper::Response<B>, Infallible>> + Unpin,
{
    type Output = Result<hyper::Response<HeldUntilSent<B>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(response) = std::task::ready!(Pin::new(&mut self.answer).poll(cx));
        let in_flight = self.in_flight.take();
        let memory = self.memory.clone();
        Poll::Ready(Ok(
            response.map(|body| HeldUntilSent::new(body, in_flight, memory))
        ))
    }
}

/// A response body holding its stream in flight until hyper drops it:
/// after its last frame, or when the client resets the stream. Between
/// giving hyper a data frame and being asked for the next, it counts as
/// waiting on the client: hyper asks once the client's window has room.
///
/// hyper hands h2 a whole data frame once the window has any room, h2
/// keeps what the window cannot take, and hyper asks for the next frame
/// at once; after the last, the stream is done in hyper's eyes while its
/// data may still wait in h2, out of sight. So long data is given in
/// pieces ([`ANSWER_PIECE`]), each of which hyper hands on only once the
/// window has room for all that came before: a long answer the client
/// starves is seen waiting, one it reads however slowly moves piece by
/// piece, and what a finished stream can leave in h2 is one piece.
struct HeldUntilSent<B> {
    body: B,
    in_flight: Option<InFlight>,
    /// What each data frame is charged to until its bytes are freed.
    memory: Arc<BodyMemory>,
    /// The round its wait is counted in, while it waits.
    waiting: Option<usize>,
    /// What is left of a data frame given in pieces.
    rest: Option<Bytes>,
}

impl<B> HeldUntilSent<B> {
    fn new(body: B, in_flight: Option<InFlight>, memory: Arc<BodyMemory>) -> HeldUntilSent<B> {
        HeldUntilSent {
            body,
            in_flight,
            memory,
            waiting: None,
            rest: None,
        }
    }

    fn end_wait(&mut self) {
        if let Some(round) = self.waiting.take()
            && let Some(InFlight(state)) = &self.in_flight
        {
            state.send_wait_over(round);
        }
    }

    /// The next frame: the next piece of a data frame, or the body's own.
    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
    where
        B: HttpBody<Data = Bytes> + Unpin,
    {
        let mut data = match self.rest.take() {
            Some(rest) => rest,
            None => {
                let polled = Pin::new(&mut self.body).poll_frame(cx);
                let Poll::Ready(Some(Ok(frame))) = polled else {
                    return polled;
                };
                match frame.into_data() {
                    Ok(data) if data.is_empty() => data,
                    Ok(data) => self.memory.charge_answer(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                }
            }
        };
        if data.len() > ANSWER_PIECE {
            self.rest = Some(data.split_off(ANSWER_PIECE));
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl<B> Drop for HeldUntilSent<B> {
    fn drop(&mut self) {
        self.end_wait();
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for HeldUntilSent<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        this.end_wait();
        let polled = this.next_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && let Some(InFlight(state)) = &this.in_flight
        {
            this.waiting = Some(state.send_waits());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when the bytes of a new request start to arrive and
/// when a write waits on the client. A wait left open when the socket goes
/// needs no closing: the connection's state goes with it.
struct Watched {
    stream: TcpStream,
    state: Arc<ConnectionState>,
    /// The round a waiting write is counted in.
    waiting: Option<usize>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.bytes_arrived();
        }
        polled
    }
}

impl Watched {
    /// Notes whether a write took bytes or waits on the client.
    fn note_write(&mut self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &polled {
            Poll::Pending if self.waiting.is_none() => {
                self.waiting = Some(self.state.send_waits());
            }
            Poll::Ready(Ok(written)) if *written > 0 => {
                if let Some(round) = self.waiting.take() {
                    self.state.send_wait_over(round);
                }
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(5),
        keep_alive_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connections_phase() {
        let state = ConnectionState::new(Instant::now());
        let accepted = Instant::now();
        assert_eq!(
            state.deadline(&LIMITS),
            Some(accepted + LIMITS.header_read_timeout)
        );
        state.request_started();
        assert_eq!(state.deadline(&LIMITS), None, "no deadline while serving");
        tokio::time::advance(Duration::from_secs(30)).await;
        state.request_finished();
        let answered = Instant::now();
        assert_eq!(
            state.deadline(&LIMITS),
            Some(answered + LIMITS.keep_alive_timeout)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        state.bytes_arrived();
        assert_eq!(
            state.deadline(&LIMITS),
            Some(Instant::now() + LIMITS.header_read_timeout),
            "the header clock starts at the next request's first byte"
        );
    }

    /// Checks every `interval`, another answer waiting and moving in
    /// each, until some answer is seen stalled: how long that took.
    async fn stall_seen_after(
        sends: &mut SendWatch,
        state: &ConnectionState,
        interval: Duration,
    ) -> Duration {
        let began = Instant::now();
        for _ in 0..100 {
            tokio::time::advance(interval).await;
            let moving = state.send_waits();
            state.send_wait_over(moving);
            if sends.stalled(state, Instant::now()) {
                return began.elapsed();
            }
        }
        panic!("never seen stalled");
    }

    #[tokio::test(start_paused = true)]
    async fn one_stalled_answer_is_seen_while_others_move() {
        let state = ConnectionState::new(Instant::now());
        let timeout = Duration::from_secs(4);
        let mut sends = SendWatch::new(timeout, Instant::now());
        // A wait that begins late in a round, checked every 100 ms: seen
        // within a quarter timeout and a check.
        tokio::time::advance(Duration::from_millis(2900)).await;
        let stalled = state.send_waits();
        let seen = stall_seen_after(&mut sends, &state, Duration::from_millis(100)).await;
        assert!(
            seen >= timeout && seen <= timeout + Duration::from_millis(1100),
            "{seen:?}"
        );
        state.send_wait_over(stalled);
        assert!(
            !sends.stalled(&state, Instant::now()),
            "the client took bytes"
        );
        // Waits that end within the timeout, however many rounds pass.
        for _ in 0..40 {
            let round = state.send_waits();
            tokio::time::advance(Duration::from_secs(3)).await;
            assert!(!sends.stalled(&state, Instant::now()));
            state.send_wait_over(round);
        }
        // Checked every 3 s: within a check's interval, twice.
        let stalled = state.send_waits();
        let seen = stall_seen_after(&mut sends, &state, Duration::from_secs(3)).await;
        assert!(
            seen >= timeout && seen <= timeout + Duration::from_secs(6),
            "{seen:?}"
        );
        state.send_wait_over(stalled);
    }

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::AcqRel);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_shutdown_and_the_timer_wake_the_task_and_are_told_apart() {
        let state = ConnectionState::new(Instant::now());
        let timer = tokio::time::sleep(LIMITS.header_read_timeout);
        tokio::pin!(timer);
        let mut interrupts = Interrupts {
            state: &state,
            timer,
            timer_waker: None,
        };
        let woken = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let wakes = || woken.0.load(Ordering::Acquire);

        assert!(interrupts.poll(&mut cx).is_pending());
        state.stop();
        assert_eq!(wakes(), 1, "shutdown wakes the task");
        assert!(matches!(
            interrupts.poll(&mut cx),
            Poll::Ready(Interrupt::Stopping)
        ));
        assert!(interrupts.poll(&mut cx).is_pending(), "told once");

        tokio::time::advance(LIMITS.header_read_timeout).await;
        assert_eq!(wakes(), 2, "the timer wakes the task it was polled in");
        assert!(matches!(
            interrupts.poll(&mut cx),
            Poll::Ready(Interrupt::Timer)
        ));
        interrupts.move_timer(Instant::now() + LIMITS.header_read_timeout);
        assert!(
            interrupts.poll(&mut cx).is_pending(),
            "moved, and armed again"
        );
        tokio::time::advance(LIMITS.header_read_timeout).await;
        assert_eq!(wakes(), 3, "the moved timer wakes the task too");
        assert!(matches!(
            interrupts.poll(&mut cx),
            Poll::Ready(Interrupt::Timer)
        ));

        state.evict();
        assert_eq!(wakes(), 4, "eviction wakes the task");
        assert!(matches!(
            interrupts.poll(&mut cx),
            Poll::Ready(Interrupt::Evicted)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_connection_is_evicted_never_a_busy_one() {
        let table = Arc::new(ConnectionTable::new(3));
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(table.open(table.slots.clone().try_acquire_owned().unwrap()));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        open[0].state.request_started();
        table.evict_oldest_idle();
        let chosen: Vec<bool> = open
            .iter()
            .map(|c| c.state.chosen.load(Ordering::Acquire))
            .collect();
        assert_eq!(chosen, [false, true, false]);
        table.evict_oldest_idle();
        table.evict_oldest_idle();
        assert!(!open[0].state.chosen.load(Ordering::Acquire));
        drop(open.remove(1));
        assert_eq!(table.open.lock().unwrap().len(), 2);
        assert_eq!(table.slots.available_permits(), 1);
    }
}
