//! Group commit: small writes that arrive from many tasks at once (agents' replies, container
//! statuses) are queued and written many to a transaction. While one batch is being written
//! the next gathers, so under load each write costs a share of one round trip to the single
//! writer connection instead of a round trip (and a commit) of its own, and alone it costs
//! what it did before. Each caller still waits for its own write to be committed and gets its
//! own answer: nothing is acknowledged before it is durable.
//!
//! The queue is bounded ([`QUEUE`]): when it is full, callers wait for room (backpressure
//! into the agents' sessions); nothing is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Result, StoreError};

/// Writes waiting at most in one group's queue.
pub const QUEUE: usize = 4096;
/// Writes in one transaction at most: as many as may wait. At 512 the replies' group was what
/// held a deploy of 100,000 replicas back (commands answered but not yet written piled up to
/// 50,000 in flight); taking the whole queue at once gave 4,464 -> 5,080 containers/s there
/// (BENCHMARKS.md). A bigger group holds the writer longer: other writes wait for up to
/// one group's transaction.
pub const MOST: usize = QUEUE;

type Reply<O> = oneshot::Sender<Result<O, String>>;
type Write<I, O> =
    Arc<dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Result<Vec<O>>> + Send>> + Send + Sync>;

/// A queue of writes of one kind, written in groups by one task.
pub struct Group<I, O> {
    tx: mpsc::Sender<(I, Reply<O>)>,
}

impl<I, O> Clone for Group<I, O> {
    fn clone(&self) -> Self {
        Group {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Group<I, O> {
    /// Starts the task that writes the groups with `write` (which answers one output per
    /// input, in order). It ends when the last handle is dropped.
    pub fn start(write: Write<I, O>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(I, Reply<O>)>(QUEUE);
        tokio::spawn(async move {
            let mut items = Vec::with_capacity(MOST);
            while rx.recv_many(&mut items, MOST).await > 0 {
                let (inputs, replies): (Vec<I>, Vec<Reply<O>>) =
                    std::mem::take(&mut items).into_iter().unzip();
                let n = inputs.len();
                match write(inputs).await {
                    Ok(outputs) if outputs.len() == n => {
                        for (reply, output) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(output));
                        }
                    }
                    Ok(outputs) => {
                        let why = format!("a group write answered {} of {n} writes", outputs.len());
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                    Err(e) => {
                        // The whole transaction was rolled back: every write in it failed.
                        let why = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        Group { tx }
    }

    /// Queues one write (waiting for room when the queue is full) and waits until its group
    /// is committed.
    pub async fn write(&self, input: I) -> Result<O> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((input, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Group)
    }
}
