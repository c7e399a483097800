//! A downstream that can go away: a loopback TCP forwarder in front of a [`Sink`](super::sink::Sink)
//! whose port can be closed (connections are refused, open ones are cut) and opened again on the
//! same port, as when the EHR or the SMS gateway is down for a while and comes back.
//!
//! A forwarder rather than stopping the sink itself, so that "down" really means a closed port,
//! keep-alive connections included: the daemon's HTTP client pools connections, and a sink that
//! only stops accepting new ones would keep answering on the old ones.

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A forwarder from `port` to the sink's port.
pub struct Gate {
    /// The port the daemon is configured with.
    pub port: u16,
    target: u16,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Gate {
    /// Opens a gate on a free port to `target` (a port on 127.0.0.1).
    pub async fn open(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut g = Gate { port, target, running: None };
        g.serve(listener);
        g
    }

    /// The URL to configure instead of the sink's own.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Whether connections get through.
    pub fn is_open(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the port and cuts every connection through it. Returns once nothing listens.
    pub async fn close(&mut self) {
        if let Some((stop, accept)) = self.running.take() {
            stop.cancel();
            let _ = accept.await;
        }
    }

    /// Listens on the same port again.
    pub async fn reopen(&mut self) {
        if self.running.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("the gate's port is free again");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let target = self.target;
        let s = stop.clone();
        let accept = tokio::spawn(async move {
            let connections = tokio_util::task::TaskTracker::new();
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    r = listener.accept() => {
                        let Ok((mut inbound, _)) = r else { continue };
                        let s = s.clone();
                        connections.spawn(async move {
                            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                            tokio::select! {
                                _ = s.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        });
                    }
                }
            }
            drop(listener);
            connections.close();
            connections.wait().await;
        });
        self.running = Some((stop, accept));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.running.take() {
            stop.cancel();
        }
    }
}
