//! Async locks by key: one mutex per session (chat turns and imports of one session run
//! one at a time), one per upload content (identical uploads are admitted one at a
//! time), without one lock serialising every tenant.
//!
//! Locks live only while someone holds or waits for them: the map keeps weak
//! references and drops dead ones as it grows.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::OwnedMutexGuard;

/// See the module documentation.
#[derive(Clone, Default)]
pub struct KeyedLocks {
    locks: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

/// Held while the key is locked; dropping it unlocks.
pub type KeyGuard = OwnedMutexGuard<()>;

impl KeyedLocks {
    /// Waits for the lock of `key` and returns its guard.
    pub async fn lock(&self, key: String) -> KeyGuard {
        let mutex = {
            let mut locks = self.locks.lock();
            if let Some(live) = locks.get(&key).and_then(Weak::upgrade) {
                live
            } else {
                // Sweep before the map doubles, so it stays proportional to the keys in use.
                if locks.len() >= 64 && locks.len().is_power_of_two() {
                    locks.retain(|_, w| w.strong_count() > 0);
                }
                let fresh = Arc::new(tokio::sync::Mutex::new(()));
                locks.insert(key, Arc::downgrade(&fresh));
                fresh
            }
        };
        mutex.lock_owned().await
    }

    /// Keys with a live lock (for tests).
    pub fn live(&self) -> usize {
        self.locks.lock().values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_is_exclusive_and_other_keys_are_not_held_up() {
        let locks = KeyedLocks::default();
        let held = locks.lock("a".into()).await;
        // Another key is free at once.
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock("b".into())).await;
        assert!(other.is_ok());
        // The same key waits until the guard goes.
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.lock("a".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn unused_locks_are_forgotten() {
        let locks = KeyedLocks::default();
        for i in 0..1000 {
            drop(locks.lock(format!("k{i}")).await);
        }
        assert_eq!(locks.live(), 0);
        assert!(locks.locks.lock().len() < 1000, "dead entries are swept as the map grows");
    }
}
