//! A small limiter for Telegram's sending limits: about one message a second per chat and about
//! thirty a second overall, plus a pause for everyone after a 429.
//!
//! Each send *reserves* a slot. Short waits are slept inside `send`; a wait longer than
//! [`MAX_INLINE_WAIT`] is not slept but handed back to the outbox as `Retry { after }`, so a send
//! never sits in a long sleep the daemon would have to wait for at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The longest wait slept inside a send.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(5);

/// Per-chat and global spacing of sends.
pub struct RateLimiter {
    per_chat: Duration,
    global: Duration,
    state: Mutex<State>,
}

struct State {
    global_next: Instant,
    chat_next: HashMap<i64, Instant>,
    paused_until: Instant,
}

impl RateLimiter {
    /// `per_chat` between two messages to one chat; `per_sec` messages a second overall.
    pub fn new(per_chat: Duration, per_sec: u32) -> Self {
        let now = Instant::now();
        Self {
            per_chat,
            global: Duration::from_secs(1) / per_sec.max(1),
            state: Mutex::new(State { global_next: now, chat_next: HashMap::new(), paused_until: now }),
        }
    }

    /// Reserves the next slot for `chat`: `Ok(wait)` to sleep before sending, or `Err(wait)`
    /// (nothing reserved) when the wait is too long to sleep here.
    pub fn reserve(&self, chat: i64) -> Result<Duration, Duration> {
        let now = Instant::now();
        let Ok(mut s) = self.state.lock() else { return Ok(Duration::ZERO) };
        let chat_next = s.chat_next.get(&chat).copied().unwrap_or(now);
        // The global slot is taken in arrival order; a chat's own spacing delays only that chat.
        let global_slot = now.max(s.global_next);
        let at = global_slot.max(chat_next).max(s.paused_until);
        let wait = at - now;
        if wait > MAX_INLINE_WAIT {
            return Err(wait);
        }
        s.global_next = global_slot + self.global;
        if s.chat_next.len() > 4096 {
            s.chat_next.retain(|_, t| *t > now);
        }
        s.chat_next.insert(chat, at + self.per_chat);
        Ok(wait)
    }

    /// Telegram said 429 with `retry_after`: nobody sends before it has passed.
    pub fn pause(&self, d: Duration) {
        if let Ok(mut s) = self.state.lock() {
            s.paused_until = s.paused_until.max(Instant::now() + d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_sends_per_chat_and_globally() {
        let l = RateLimiter::new(Duration::from_secs(1), 10);
        assert_eq!(l.reserve(1), Ok(Duration::ZERO));
        // Same chat: a second later. Another chat: only the global 100 ms spacing (third slot).
        assert_eq!(l.reserve(1), Ok(Duration::from_secs(1)));
        assert_eq!(l.reserve(2), Ok(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(l.reserve(1), Ok(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn long_pauses_are_handed_back() {
        let l = RateLimiter::new(Duration::from_millis(10), 30);
        l.pause(Duration::from_secs(30));
        assert_eq!(l.reserve(5), Err(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(l.reserve(5), Ok(Duration::ZERO));
    }
}
