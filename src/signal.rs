//! Stop signals. SIGINT and SIGTERM (Ctrl-C elsewhere) cancel a job's root token, and the job decides what
//! stopping means: `ferry sync` drains, acknowledges and checkpoints; `ferry verify` stops without a verdict.

use tokio_util::sync::CancellationToken;

/// Cancel `cancel` at the first SIGINT or SIGTERM (Ctrl-C elsewhere), logging `what` at info. Needs a
/// running tokio runtime.
pub fn on_stop_signal(cancel: CancellationToken, what: &'static str) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("{what}");
        cancel.cancel();
    });
}
