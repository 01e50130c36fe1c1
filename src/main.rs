//! The `rendezvous` binary: load settings (or print them with `--print-config`),
//! start logging, bind, and run the server in an actix system until SIGTERM/SIGINT.

use std::future::{poll_fn, Future};
use std::process::ExitCode;
use std::task::Poll;

use rendezvous::config::{Config, ConfigError};
use rendezvous::{server, shutdown, telemetry};

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(loaded) if loaded.print_config => {
            print!("{}", loaded.config.to_toml_masked());
            return ExitCode::SUCCESS;
        }
        Ok(loaded) => loaded.config,
        // Bad flags, `--help`, `--version`: clap prints and exits (2, or 0).
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("rendezvous: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.log_format);
    // Each session is one file descriptor: lift the soft limit to the hard limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let listener = match listen(config.bind) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(bind = %config.bind, error = %e, "cannot bind");
            return ExitCode::from(1);
        }
    };
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // Install the SIGTERM/SIGINT handlers before the ready line: the future
        // registers them on its first poll, and a signal sent once the line is out
        // must drain the node, not kill it.
        let mut signal = Box::pin(shutdown::signal());
        let early = poll_fn(|cx| Poll::Ready(signal.as_mut().poll(cx).is_ready())).await;
        let shutdown = async move {
            if !early {
                signal.await;
            }
        };
        server::run(listener, config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rendezvous failed");
            ExitCode::from(1)
        }
    }
}

/// Bind with a long accept queue: at thousands of new connections per second a
/// short one overflows while the accept loop is busy, and every dropped SYN costs
/// its client a one-second retransmit. The kernel caps it at `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(8192)?;
    Ok(socket.into())
}
