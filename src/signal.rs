//! Stop signals. SIGINT and SIGTERM (Ctrl-C elsewhere) cancel a job's root token, and the job decides what
//! stopping means: `ferry sync` drains, acknowledges and checkpoints; `ferry verify` stops without a verdict.

use tokio_util::sync::CancellationToken;

/// Cancel `cancel` at the first SIGINT or SIGTERM (Ctrl-C elsewhere), logging `what` at info. Needs a
/// running tokio runtime. The handlers are in place when this returns (not when a task first runs), so a
/// signal that arrives right after start-up drains like any other.
pub fn on_stop_signal(cancel: CancellationToken, what: &'static str) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install the SIGINT/SIGTERM handlers: a stop signal ends ferry without a drain");
            return;
        };
        tracing::debug!("stop signals armed");
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("{what}");
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("{what}");
        cancel.cancel();
    });
}
