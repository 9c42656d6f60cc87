//! The `passerelle` command: run the gateway, check a configuration, print the defaults,
//! hash a password for `nt_hash_file`.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use passerelle_config::{Config, ConfigError, Env, Route};
use passerelle_gateway::Gateway;
use tokio::signal::unix::{signal, SignalKind};

/// `passerelle --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PASSERELLE_COMMIT"),
    ")"
);

/// Lets a hospital's workstations reach the Covotem telemedicine services, and nothing
/// else: set their proxy to Passerelle; each request is let through (directly or through the
/// hospital's proxy, which Passerelle authenticates to) or refused with its reason, and every
/// one is in the audit log.
#[derive(Parser)]
#[command(name = "passerelle", version = VERSION)]
struct Cli {
    #[command(flatten)]
    config: ConfigFile,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The configuration, for the commands that read one.
#[derive(clap::Args, Clone, Default)]
struct ConfigFile {
    /// Configuration file (TOML). Without it: the embedded default (the Covotem production
    /// flows, 127.0.0.1:3128, direct, audit to stdout).
    #[arg(long, short, env = "PASSERELLE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (what `passerelle` alone does). SIGHUP reloads, SIGUSR1 reopens the
    /// audit file, SIGTERM/SIGINT stop gracefully.
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Validate the configuration; print the effective flows, or every problem (exit 2).
    CheckConfig {
        #[command(flatten)]
        config: ConfigFile,
        /// Also bind each listener and open the audit sink (and release them): what the
        /// service needs to start (the systemd unit's ExecStartPre).
        #[arg(long)]
        preflight: bool,
        /// Check the secrets' keys, not their contents (where the secrets are not).
        #[arg(long, conflicts_with = "preflight")]
        without_secrets: bool,
    },
    /// Print a commented configuration with every key and its default.
    PrintDefaultConfig,
    /// Render the visio's UDP routing (an nftables table for `nft -f`) or the flow matrix a
    /// network team files, from the flow table.
    Firewall {
        #[command(flatten)]
        config: ConfigFile,
        /// What to print: the nftables table, or the flow matrix as CSV or Markdown.
        #[arg(long, value_enum, default_value = "nftables")]
        format: FirewallFormat,
        /// Also the jump host's own input rules: the proxy ports for the workstations only,
        /// the admin port for admin.allow only (nftables).
        #[arg(long)]
        input: bool,
    },
    /// Read a password (without echo) and print its NT hash, for `nt_hash_file`.
    HashPassword,
    /// Check the prerequisites through the configured routes: parent, DNS, TCP, TLS,
    /// HTTP, clock. Exit 0 only when every check passes.
    Doctor {
        #[command(flatten)]
        config: ConfigFile,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Extra CA certificates (PEM) to trust for the TLS checks.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Summarize audit logs (JSON lines) for the security team, the chain's verdict first.
    Report {
        /// Audit files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write a self-contained HTML report (charts, no script) to this file.
        #[arg(long, value_name = "OUT")]
        html: Option<PathBuf>,
        /// The HTML report's language (French, as the pages' default, or English).
        #[arg(long, value_enum, default_value = "fr")]
        lang: ReportLang,
        /// Only this client (an address or a network: 10.20.30.4, 10.20.30.0/24).
        #[arg(long)]
        client: Option<String>,
        /// From this time on (UTC: 2026-11-29, "2026-11-29 14:00"; or 24h ago).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// The chain's key (audit.key_file), to verify a keyed chain.
        #[arg(long, conflicts_with = "key")]
        key_file: Option<PathBuf>,
        /// A forward-secure chain's initial key (v1:ORIGIN:HEX, as `audit keygen` printed it).
        #[arg(long)]
        key: Option<String>,
    },
    /// The audit log's tamper evidence: verify a chain (against a collector's anchors, with
    /// the key), make a forward-secure key.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain over the files, oldest first: exit 0 only when nothing was edited,
    /// removed, inserted or reordered and no record is missing.
    ///
    /// With --anchors, also against what a collector received: names the first record
    /// rewritten, removed or cut off after it was forwarded, and lists records never forwarded
    /// or missing at the collector.
    Verify {
        /// Audit files (JSON lines), oldest first: the rotated ones, then the current one.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The chain's key file (audit.key_file): a static key, or a forward-secure key at its
        /// current epoch (records of earlier epochs are then taken on trust).
        #[arg(long, conflicts_with = "key")]
        key_file: Option<PathBuf>,
        /// A forward-secure chain's initial key (v1:ORIGIN:HEX, as `audit keygen` printed
        /// it): every epoch is checked. Read from the environment variable
        /// PASSERELLE_AUDIT_KEY when the value is "-env".
        #[arg(long)]
        key: Option<String>,
        /// What a collector received from this host (any format Passerelle forwards, or
        /// syslog lines as the collector wrote them).
        #[arg(long, value_name = "COLLECTED")]
        anchors: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a forward-secure key file (the writer moves it forward each minute and erases
    /// the past) and print its initial key once, for the security team to keep off the host.
    Keygen {
        /// Where the key lives (audit.key_file), in a directory Passerelle can write.
        #[arg(value_name = "KEY_FILE")]
        path: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportLang {
    Fr,
    En,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FirewallFormat {
    Nftables,
    Csv,
    Markdown,
}

/// The audit writer frees what the workers allocate: glibc's malloc then takes the workers'
/// arena lock (5 % of the CPU per forwarded request went there); mimalloc frees across
/// threads without it (bench/run: 11 % more requests per second).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `passerelle --config F` runs, as `passerelle run --config F` does.
    let top = cli.config.config;
    let file = |c: ConfigFile| c.config.or_else(|| top.clone());
    match cli.command.unwrap_or(Command::Run {
        config: ConfigFile::default(),
    }) {
        Command::Run { config } => run(file(config).as_deref()),
        Command::CheckConfig {
            config,
            preflight,
            without_secrets,
        } => check_config(file(config).as_deref(), preflight, without_secrets),
        Command::PrintDefaultConfig => {
            print!("{}", passerelle_config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::HashPassword => hash_password(),
        Command::Firewall {
            config,
            format,
            input,
        } => firewall(file(config).as_deref(), format, input),
        Command::Report {
            files,
            json,
            html,
            lang,
            client,
            since,
            until,
            key_file,
            key,
        } => report(
            &files,
            json,
            html.as_deref(),
            matches!(lang, ReportLang::Fr),
            client,
            since,
            until,
            key_file.as_deref(),
            key.as_deref(),
        ),
        Command::Audit { command } => match command {
            AuditCommand::Verify {
                files,
                key_file,
                key,
                anchors,
                json,
            } => verify(
                &files,
                key_file.as_deref(),
                key.as_deref(),
                anchors.as_deref(),
                json,
            ),
            AuditCommand::Keygen { path } => keygen(&path),
        },
        Command::Doctor {
            config,
            json,
            ca_file,
        } => doctor(file(config).as_deref(), json, ca_file.as_deref()),
    }
}

fn env() -> Env {
    std::env::vars().collect()
}

fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    passerelle_config::load(path, &env())
}

/// The configuration and a runtime to run it on, or the exit code that says why not.
/// One worker thread (the default) is tokio's current-thread scheduler, run by [`run`] on a
/// thread of its own: every task on one thread, with none of the wake-ups and hand-offs
/// between threads that a multi-threaded scheduler of one worker still pays.
fn prepare(path: Option<&Path>) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let config = load(path).map_err(|e| report_problems(&e))?;
    let mut builder = match config.limits.worker_threads {
        1 => {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.thread_name("passerelle-pool");
            builder
        }
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n as usize).thread_name(EVENT_LOOP);
            builder
        }
    };
    let runtime = builder.enable_all().build().map_err(|e| {
        eprintln!("passerelle: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((config, runtime))
}

/// The name of the threads serving connections.
const EVENT_LOOP: &str = "passerelle-io";

fn report_problems(error: &ConfigError) -> ExitCode {
    eprintln!("passerelle: the configuration is not valid:");
    for problem in error.problems() {
        eprintln!("  {problem}");
    }
    ExitCode::from(2)
}

fn init_tracing() {
    let filter = std::env::var("PASSERELLE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colours())
        .init();
}

/// Colours only for a person at a terminal who did not ask for none (<https://no-color.org>):
/// the journal and log files get plain text.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(path: Option<&Path>) -> ExitCode {
    init_tracing();
    let (config, runtime) = match prepare(path) {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    let one_thread = config.limits.worker_threads == 1;
    let serving = || runtime.block_on(serve(config, path));
    let served = if one_thread {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(EVENT_LOOP.to_string())
                .spawn_scoped(scope, serving)
                .map_err(anyhow::Error::from)
                .and_then(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
        })
    } else {
        serving()
    };
    // The audit is flushed: a Kerberos step still blocked on a KDC that never answers must not
    // hold the exit (the runtime would wait for its blocking threads).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passerelle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: Option<&Path>) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("config: {warning}");
    }
    let flows: Vec<String> = config
        .policy
        .enabled_flows()
        .map(|f| f.id.clone())
        .collect();
    let route = config.policy.routing().default;
    let parents: Vec<String> = config.upstreams.iter().map(|u| u.url.clone()).collect();
    let gateway = Gateway::start(config).await?;
    let listening: Vec<String> = gateway
        .proxy_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let admin = gateway
        .admin_addr()
        .map(|a| format!("admin on {a}; "))
        .unwrap_or_default();
    tracing::info!(
        "passerelle listening on {}; {admin}flows on: {}; route: {}{}",
        listening.join(", "),
        flows.join(", "),
        route,
        if parents.is_empty() {
            String::new()
        } else {
            format!(" via {}", parents.join(", "))
        }
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("reload requested (SIGHUP)");
                let _ = gateway.reload(load(path), "signal:SIGHUP").await;
            }
            _ = usr1.recv() => {
                tracing::info!("reopening the audit file (SIGUSR1)");
                gateway.reopen_audit();
            }
            request = gateway.reload_requested() => {
                tracing::info!(by = %request.by, "reload requested (admin endpoint)");
                let outcome = gateway.reload(load(path), &request.by.to_string()).await;
                let _ = request.answer.send(outcome);
            }
        }
    }
    tracing::info!("shutting down: no new connections; waiting for requests and tunnels in flight");
    gateway.shutdown().await?;
    tracing::info!("stopped; audit flushed");
    Ok(())
}

/// Renders from the flow table only: the parent's secrets are not read.
fn firewall(path: Option<&Path>, format: FirewallFormat, input: bool) -> ExitCode {
    let options = passerelle_config::Options { secrets: false };
    let config = match passerelle_config::load_with(path, &env(), options) {
        Ok(config) => config,
        Err(e) => return report_problems(&e),
    };
    use passerelle_gateway::firewall;
    let clients = config.policy.clients();
    if matches!(format, FirewallFormat::Nftables) && clients.iter().all(|n| n.addr().is_loopback())
    {
        eprintln!(
            "passerelle: warning: clients.allow names only this host ({}): the rules let no workstation's visio through; set clients.allow to the workstations' networks",
            clients.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    print!(
        "{}",
        match format {
            FirewallFormat::Nftables => firewall::nftables(&config, input, config.udp.audit),
            FirewallFormat::Csv => firewall::csv(&config),
            FirewallFormat::Markdown => firewall::markdown(&config),
        }
    );
    ExitCode::SUCCESS
}

fn check_config(path: Option<&Path>, preflight: bool, without_secrets: bool) -> ExitCode {
    let options = passerelle_config::Options {
        secrets: !without_secrets,
    };
    let config = match passerelle_config::load_with(path, &env(), options) {
        Ok(config) => config,
        Err(e) => return report_problems(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("passerelle: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = runtime.block_on(passerelle_gateway::upstream::loops_to_ourselves(
        &config.upstreams,
        &config.listen.proxy,
        config.limits.connect_timeout,
    ));
    if !problems.is_empty() {
        eprintln!("passerelle: the configuration is not valid:");
        for problem in problems {
            eprintln!("  {problem}");
        }
        return ExitCode::from(2);
    }
    if preflight {
        let busy = passerelle_gateway::preflight(&config);
        if !busy.is_empty() {
            eprintln!("passerelle: the configuration is valid, but the service cannot start with it here:");
            for problem in busy {
                eprintln!("  {problem}");
            }
            return ExitCode::from(2);
        }
    }
    for warning in &config.warnings {
        eprintln!("passerelle: warning: {warning}");
    }
    let policy = &config.policy;
    let rows: Vec<[String; 4]> = policy
        .enabled_flows()
        .map(|f| {
            let names: Vec<String> = f
                .hosts
                .iter()
                .cloned()
                .chain(f.ips.iter().map(|i| i.to_string()))
                .collect();
            let ports = port_ranges(&f.ports);
            let route = match f
                .hosts
                .first()
                .and_then(|h| passerelle_config::Host::parse(h).ok())
            {
                Some(host) => policy.route(f, &host),
                None => policy.routing().default,
            };
            let route = match route {
                Route::Direct => "direct".to_string(),
                Route::Upstream => "upstream".to_string(),
            };
            [f.id.clone(), names.join(", "), ports, route]
        })
        .collect();
    let header = ["FLOW", "HOSTS", "PORTS", "ROUTE"].map(String::from);
    // Padding stops at a sane width: a cell longer than that just runs on.
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .chain(std::iter::once(&header))
                .map(|r| r[i].chars().count().min(60))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    let off: Vec<&str> = policy
        .flows()
        .iter()
        .filter(|f| !f.enabled)
        .map(|f| f.id.as_str())
        .collect();
    if !off.is_empty() {
        println!("\nOff (environment not enabled): {}", off.join(", "));
    }
    let listen: Vec<String> = config.listen.proxy.iter().map(|a| a.to_string()).collect();
    println!(
        "\nListening on {}; clients: {}",
        listen.join(", "),
        policy
            .clients()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !config.listen.proxy_protocol_from.is_empty() {
        let from: Vec<String> = config
            .listen
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        println!(
            "PROXY protocol required from {} (their connections name the real client)",
            from.join(", ")
        );
    }
    match config.listen.admin {
        Some(addr) => {
            let allow: Vec<String> = config.admin.allow.iter().map(ToString::to_string).collect();
            println!("Admin endpoint on {addr}, for {}", allow.join(", "));
        }
        None => println!("No admin endpoint (listen.admin)"),
    }
    for u in &config.upstreams {
        let mut accounts: Vec<String> = Vec::new();
        if let Some(k) = &u.kerberos {
            accounts.push(match &k.principal {
                Some(p) => format!("{p} (Kerberos, SPN {})", k.spn),
                None => format!("the credential cache's (Kerberos, SPN {})", k.spn),
            });
        }
        if let Some(c) = &u.credentials {
            if u.kerberos.is_none() || u.auth != passerelle_auth::AuthMode::Negotiate {
                accounts.push(c.account());
            }
        }
        let account = if accounts.is_empty() {
            "none".to_string()
        } else {
            accounts.join(", ")
        };
        println!("Parent {} (auth {}, account {})", u.url, u.auth, account);
    }
    let mut mapped: Vec<String> = config
        .resolve
        .connect_to
        .iter()
        .map(|((host, port), to)| format!("{host}:{port} -> {to}"))
        .collect();
    mapped.sort();
    if !mapped.is_empty() {
        println!(
            "Reached at fixed addresses (resolve.connect_to): {}",
            mapped.join(", ")
        );
    }
    let sink = match &config.audit.sink {
        passerelle_config::AuditSink::Stdout => "stdout".to_string(),
        passerelle_config::AuditSink::File(path) => path.display().to_string(),
        passerelle_config::AuditSink::Syslog(passerelle_config::SyslogTarget::Unix(path)) => {
            format!("syslog unix:{}", path.display())
        }
        passerelle_config::AuditSink::Syslog(passerelle_config::SyslogTarget::Udp(addr)) => {
            format!("syslog udp:{addr}")
        }
    };
    let key = match &config.audit.key_file {
        Some(path) => format!(", chain keyed by {}", path.display()),
        None => ", chain without a key".to_string(),
    };
    println!("Audit to {sink} ({}{key})", config.audit.format.as_str());
    for f in &config.audit.forward {
        println!("Audit forwarded to {} ({})", f.name, f.format.as_str());
    }
    println!("Configuration is valid (digest {}).", &config.digest[..16]);
    ExitCode::SUCCESS
}

/// `80, 443, 8000-8100`: consecutive ports as ranges.
fn port_ranges(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if end > start + 1 {
            format!("{start}-{end}")
        } else if end == start + 1 {
            format!("{start}, {end}")
        } else {
            start.to_string()
        });
        i += 1;
    }
    parts.join(", ")
}

fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        match (ask_hidden("Password: "), ask_hidden("Again: ")) {
            (Ok(first), Ok(again)) if first == again => first,
            (Ok(_), Ok(_)) => {
                eprintln!("passerelle: the two passwords differ; nothing printed");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("passerelle: cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut text = zeroize::Zeroizing::new(String::new());
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("passerelle: cannot read the password from standard input: {e}");
            return ExitCode::FAILURE;
        }
        let trimmed = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        zeroize::Zeroizing::new(trimmed.to_string())
    };
    if password.is_empty() {
        eprintln!("passerelle: empty password");
        return ExitCode::from(2);
    }
    let hash = passerelle_auth::nt_hash(&password);
    println!(
        "{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    ExitCode::SUCCESS
}

/// Asks for a secret on the terminal. Echo goes off before the prompt shows (a prompt printed
/// first, as password crates do, echoes what is typed in the moment before), and the terminal's
/// settings come back whatever happens.
fn ask_hidden(prompt: &str) -> std::io::Result<zeroize::Zeroizing<String>> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, Write};
    struct Restore<'a>(&'a std::fs::File, rustix::termios::Termios);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.0, OptionalActions::Now, &self.1);
        }
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    let saved = tcgetattr(&tty)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Now, &quiet)?;
    let _restore = Restore(&tty, saved);
    (&tty).write_all(prompt.as_bytes())?;
    (&tty).flush()?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::BufReader::new(&tty).read_line(&mut line)?;
    let end = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(end);
    Ok(line)
}

/// What the verifier knows of the chain's key: the initial key, the key file, or nothing.
fn known_key(
    key_file: Option<&Path>,
    key: Option<&str>,
) -> Result<passerelle_gateway::audit::key::Known, ExitCode> {
    use passerelle_gateway::audit::key::Known;
    let known = match (key_file, key) {
        (_, Some("-env")) => match std::env::var("PASSERELLE_AUDIT_KEY") {
            Ok(text) => Known::initial(&text),
            Err(_) => {
                eprintln!("passerelle: --key -env, but PASSERELLE_AUDIT_KEY is not set");
                return Err(ExitCode::from(2));
            }
        },
        (_, Some(text)) => Known::initial(text),
        (Some(path), None) => Known::file(path),
        (None, None) => Ok(Known::Keyless),
    };
    known.map_err(|e| {
        eprintln!("passerelle: {e}");
        ExitCode::from(2)
    })
}

fn verify(
    files: &[PathBuf],
    key_file: Option<&Path>,
    key: Option<&str>,
    anchors: Option<&Path>,
    json: bool,
) -> ExitCode {
    use passerelle_gateway::audit::{anchors as anchor, chain};
    let known = match known_key(key_file, key) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let failed = |e: String| {
        eprintln!("passerelle: {e}");
        ExitCode::from(2)
    };
    let mut verdict = match chain::verify(&paths, &known) {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    let anchored = match anchors {
        Some(collected) => match anchor::verify(&paths, collected) {
            Ok(v) => {
                verdict.limits.retain(|l| !l.contains("--anchors"));
                Some(v)
            }
            Err(e) => return failed(e),
        },
        None => None,
    };
    if json {
        // The chain's verdict as before, and beside it what the anchors say, when given.
        let mut out = serde_json::to_value(&verdict).unwrap_or_default();
        if let (Some(a), Some(map)) = (&anchored, out.as_object_mut()) {
            map.insert(
                "anchors".into(),
                serde_json::to_value(a).unwrap_or_default(),
            );
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("{}", passerelle_gateway::report::verdict_line(&verdict));
        if verdict.unchecked > 0 {
            println!(
                "{} records signed before the key file's epoch were not checked",
                verdict.unchecked
            );
        }
        for limit in &verdict.limits {
            println!("cannot know: {limit}");
        }
        if let Some(a) = &anchored {
            print!("{}", anchor::describe(a));
        }
    }
    if verdict.intact() && anchored.as_ref().is_none_or(anchor::AnchorVerdict::intact) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn keygen(path: &Path) -> ExitCode {
    match passerelle_gateway::audit::key::Key::generate(path, std::time::SystemTime::now()) {
        Ok(initial) => {
            eprintln!(
                "passerelle: wrote the forward-secure key {} (epoch 0). The initial key below is printed once: keep it off this host (the security team's safe); it verifies every record with `passerelle audit verify --key`. Set audit.key_file = {:?}.",
                path.display(),
                path.display()
            );
            println!("{}", &*initial);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("passerelle: {e}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    files: &[PathBuf],
    json: bool,
    html: Option<&Path>,
    french: bool,
    client: Option<String>,
    since: Option<String>,
    until: Option<String>,
    key_file: Option<&Path>,
    key: Option<&str>,
) -> ExitCode {
    use passerelle_gateway::report;
    let bad = |e: String| {
        eprintln!("passerelle: {e}");
        ExitCode::from(2)
    };
    let mut filter = report::Filter::default();
    if let Some(c) = client {
        let net = c
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => filter.client = Some(net),
            Err(_) => return bad(format!("--client {c:?} is not an address or a network")),
        }
    }
    for (value, slot) in [(since, &mut filter.since), (until, &mut filter.until)] {
        if let Some(v) = value {
            match report::parse_time(&v) {
                Ok(t) => *slot = Some(t),
                Err(e) => return bad(e),
            }
        }
    }
    let mut text = String::new();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(t) => text.push_str(&t),
            Err(e) => return bad(format!("cannot read {}: {e}", file.display())),
        }
        text.push('\n');
    }
    let known = match known_key(key_file, key) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut summary = report::summarize(text.lines(), &filter);
    summary.verification = passerelle_gateway::audit::chain::verify(&paths, &known).ok();
    if let Some(out) = html {
        let page = report::render_html(&summary, &filter, french);
        if let Err(e) = std::fs::write(out, page) {
            return bad(format!("cannot write {}: {e}", out.display()));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        print!("{}", report::render(&summary));
    }
    // A report over files whose chain does not hold says so in its exit code too.
    if summary.verification.as_ref().is_some_and(|v| !v.intact()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn doctor(path: Option<&Path>, json: bool, ca_file: Option<&Path>) -> ExitCode {
    let (config, runtime) = match prepare(path) {
        Ok(ready) => ready,
        Err(code) => return code,
    };
    let checks = match runtime.block_on(passerelle_gateway::doctor::run(config, ca_file)) {
        Ok(checks) => checks,
        Err(e) => {
            eprintln!("passerelle: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        print!("{}", passerelle_gateway::doctor::render(&checks));
    }
    if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
