//! Starting the OS thread that owns a model. libtorch's thread count and grad mode are
//! per thread, and tch modules are not `Sync`, so a model is created, used and dropped
//! on one thread of its own; callers reach it through a queue.

use std::time::Instant;

/// Spawns thread `name`: sets the thread count (0: libtorch's default, all cores) and
/// no-grad mode there, builds the model with `load`, then runs `serve` with it until
/// `serve` returns. Blocks until loading finished and returns what `load` reported
/// besides the model (its info), or why it failed.
pub(crate) fn spawn<M, I>(
    name: &str,
    threads: usize,
    load: impl FnOnce() -> Result<(M, I), String> + Send + 'static,
    serve: impl FnOnce(M) + Send + 'static,
) -> Result<(I, std::time::Duration), String>
where
    I: Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if threads > 0 {
                tch::set_num_threads(threads as i32);
            }
            let _no_grad = tch::no_grad_guard();
            let started = Instant::now();
            match load() {
                Ok((model, info)) => {
                    let _ = ready_tx.send(Ok((info, started.elapsed())));
                    serve(model);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("starting its thread: {e}"))?;
    ready_rx.recv().map_err(|_| "the loading thread died".to_owned())?
}
