//! `capvault`: the command-line tool for administrators, collectors and the people being
//! recorded. The command set, flags, exit codes and JSON Lines fields are the contract of
//! SPEC section 9 and are documented in docs/CLI.md.
//!
//! Exit codes: 0 success, 1 operational failure, 2 usage error, 3 integrity failure.

mod admin;
mod collector;
mod demo;
mod files;
mod output;
mod secrets;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use output::{CliError, CliResult};

const ABOUT: &str = "Encrypted on-device vault for activity-capture data: administer a vault, \
seal and open bundles, see and erase your own records.";

const MAIN_EXAMPLES: &str = "\
Examples:
  capvault demo                                        simulate a capture session end to end
  capvault init   --vault /var/lib/capvault --user alice
  capvault status --vault /var/lib/capvault --user alice --json
  capvault keys rotate --kek --vault /var/lib/capvault --user alice
  capvault recipient new --out collector.identity
  capvault recipient show -i collector.identity          the recipient of an identity
  (umask 077; capvault open -i collector.identity bundles/*.cvb > events.jsonl)

Short flags: -v/--vault, -u/--user, -o/--out (--out-dir for seal), -i/--identity,
-t/--to (seal). `-` stands for stdout (--out) or stdin (--identity, bundles, --receipt).

--vault and --user can also come from CAPVAULT_VAULT and CAPVAULT_USER.
Exit codes: 0 success, 1 operational failure, 2 usage error, 3 integrity failure.";

#[derive(Parser, Debug)]
#[command(name = "capvault", version, about = ABOUT, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    /// Print a machine-readable JSON report instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Where the vault is and whose data: shared by every vault-scoped command.
#[derive(Args, Debug, Clone)]
pub struct VaultArgs {
    /// Vault directory [env: CAPVAULT_VAULT]
    #[arg(short = 'v', long, value_name = "DIR")]
    pub vault: Option<PathBuf>,
    /// The user (data subject) whose data to work on [env: CAPVAULT_USER]
    #[arg(short = 'u', long, value_name = "NAME")]
    pub user: Option<String>,
    /// OS keychain holding the vault's keys.
    #[arg(long, value_enum, default_value_t = KeystoreArg::Auto)]
    pub keystore: KeystoreArg,
    /// Vault options as JSON (the capture agent's options_json), e.g. its policy; the
    /// policy must match the one the agent uses.
    #[arg(long, value_name = "FILE")]
    pub options: Option<PathBuf>,
}

/// `VaultArgs` plus how long to wait for a capture agent that holds the vault.
#[derive(Args, Debug, Clone)]
pub struct HandoffArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
    /// When another process holds the vault, how long to wait for it to answer the
    /// request (30s, 2m, ...).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = output::parse_duration)]
    pub wait: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeystoreArg {
    /// The platform's persistent keychain (Secret Service on Linux).
    Auto,
    /// Freedesktop Secret Service (gnome-keyring, KWallet, KeePassXC).
    SecretService,
    /// Linux kernel keyutils (no daemon; keys are lost at reboot).
    Keyutils,
    /// macOS Keychain.
    MacosKeychain,
    /// Windows Credential Manager.
    WindowsCredential,
}

impl KeystoreArg {
    pub fn kind(self) -> capvault::KeyStoreKind {
        use capvault::KeyStoreKind as K;
        match self {
            KeystoreArg::Auto => K::Auto,
            KeystoreArg::SecretService => K::SecretService,
            KeystoreArg::Keyutils => K::Keyutils,
            KeystoreArg::MacosKeychain => K::MacosKeychain,
            KeystoreArg::WindowsCredential => K::WindowsCredential,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Simulate a capture session end to end (temporary vault, seal, open, ack) and report.
    #[command(
        after_help = "Examples:\n  capvault demo\n  capvault demo --seconds 20 --keep ./demo-out --json"
    )]
    Demo(demo::DemoArgs),
    /// Create a vault for a user (keys in the OS keychain).
    #[command(
        after_help = "Example:\n  capvault init --vault /var/lib/capvault --user alice --keystore secret-service"
    )]
    Init(VaultArgs),
    /// Report keys, epochs, records, pause state; `erased: true` after an erase.
    #[command(
        after_help = "Example:\n  capvault status --vault /var/lib/capvault --user alice --json\n\nWorks while a capture agent holds the vault (through its hand-off)."
    )]
    Status(HandoffArgs),
    /// Walk and check every record and the audit ledger (exit 3 on tampering).
    #[command(after_help = "Example:\n  capvault verify --vault /var/lib/capvault --user alice")]
    Verify(VaultArgs),
    /// Pause capture for a while (capped by the policy, default 30 minutes).
    #[command(
        after_help = "Example:\n  capvault pause --for 30m --vault /var/lib/capvault --user alice"
    )]
    Pause(PauseArgs),
    /// End a pause now.
    #[command(after_help = "Example:\n  capvault resume --vault /var/lib/capvault --user alice")]
    Resume(HandoffArgs),
    /// List or rotate keys; works while a capture agent holds the vault.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Seal unreleased records into bundles for the collector.
    #[command(
        after_help = "Example:\n  capvault seal --to cvrecip-x25519-1... --out-dir outbox/ --vault /var/lib/capvault --user alice"
    )]
    Seal(admin::SealArgs),
    /// Acknowledge bundles the collector received; their records are pruned.
    #[command(
        after_help = "Examples:\n  capvault ack cvb1abc... --vault /var/lib/capvault --user alice\n  capvault ack --receipt receipts.txt --receipt-key cvreceipt-ed25519-1... --vault /var/lib/capvault --user alice"
    )]
    Ack(admin::AckArgs),
    /// Write the device's signed enrollment record (collectors pin its key from it).
    #[command(
        after_help = "Examples:\n  capvault enroll --out device.enroll.json --vault /var/lib/capvault --user alice\n  capvault enroll --out - --vault /var/lib/capvault --user alice | curl ...\n\nThe record is public (device id, device public key, creation time, signature); the same on every run.\nWorks while a capture agent holds the vault (through its hand-off)."
    )]
    Enroll(admin::EnrollArgs),
    /// Crypto-shred this user's data: keys are destroyed, nothing stays readable.
    #[command(
        after_help = "Example:\n  capvault erase --yes --vault /var/lib/capvault --user alice"
    )]
    Erase(EraseArgs),
    /// Your own records, as JSON Lines (every use is written to the audit ledger).
    #[command(
        after_help = "Example:\n  capvault show --vault ~/.local/share/capvault --user $USER > my-data.jsonl"
    )]
    Show(admin::ShowArgs),
    /// The audit ledger: opens, seals, acks, rotations, pauses, erasures, reads.
    #[command(
        after_help = "Example:\n  capvault audit --vault /var/lib/capvault --user alice --json"
    )]
    Audit(VaultArgs),
    /// Collector identities and recipients.
    #[command(subcommand)]
    Recipient(RecipientCmd),
    /// Open bundles: events as JSON Lines on stdout, chain check on stderr.
    #[command(
        after_help = "Example:\n  (umask 077; capvault open --identity collector.identity inbox/*.cvb --blobs-dir blobs/ > events.jsonl)\n\nThe events are plaintext: stdout may be a terminal, a pipe, or a file only you can \nopen (umask 077); any other file is refused.\n\nExit 3 when a bundle or the chain fails an integrity check."
    )]
    Open(collector::OpenArgs),
    /// Write collector receipts for bundles (give them to `capvault ack --receipt`).
    #[command(
        after_help = "Example:\n  capvault receipt --identity collector.identity inbox/cvb1abc.cvb --out receipts.txt"
    )]
    Receipt(collector::ReceiptArgs),
    /// Upload this vault's bundles to a collector (enroll once, send, verify receipts, ack).
    #[command(
        after_help = "Examples:\n  capvault upload --once --to https://ingest.example.com --recipient cvrecip-x25519-1... --receipt-key cvreceipt-ed25519-1... --vault /var/lib/capvault --user alice\n  CAPVAULT_UPLOAD_TOKEN=... capvault upload --to https://ingest.example.com --recipient cvrecip-x25519-1... --receipt-key cvreceipt-ed25519-1... --vault /var/lib/capvault --user alice\n\nWithout --once it keeps uploading until SIGINT or SIGTERM. Exit 0 when drained (--once), 1 with the error."
    )]
    Upload(upload::UploadArgs),
    /// Hold the vault and answer hand-off requests until killed (admin and test aid).
    #[command(hide = true)]
    Serve(admin::ServeArgs),
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    /// How long: 30s, 15m, 1h (capped by the policy's maximum pause).
    #[arg(long = "for", value_name = "DURATION", value_parser = output::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub h: HandoffArgs,
}

#[derive(Args, Debug)]
pub struct EraseArgs {
    /// Confirm: this destroys the user's keys and data and cannot be undone.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub h: HandoffArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Key store, KEK version, data-key epochs with creation times and record counts.
    #[command(
        after_help = "Example:\n  capvault keys list --vault /var/lib/capvault --user alice"
    )]
    List(HandoffArgs),
    /// Start a new data-key epoch, or with --kek rewrap all data keys under a new KEK.
    #[command(
        after_help = "Examples:\n  capvault keys rotate --vault /var/lib/capvault --user alice\n  capvault keys rotate --kek --vault /var/lib/capvault --user alice\n\nWorks while a capture agent holds the vault (through its hand-off)."
    )]
    Rotate(RotateArgs),
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// Rotate the key-encryption key (in the keychain) instead of the data key.
    #[arg(long)]
    pub kek: bool,
    #[command(flatten)]
    pub h: HandoffArgs,
}

#[derive(Subcommand, Debug)]
pub enum RecipientCmd {
    /// Create a collector identity; prints the recipient to give to devices.
    #[command(
        after_help = "Examples:\n  capvault recipient new --out collector.identity\n  capvault recipient new --pq --out collector-pq.identity\n  capvault recipient new --out - > collector.identity    (the identity on stdout, the recipient on stderr)"
    )]
    New(collector::NewRecipientArgs),
    /// Print the recipient of an identity (and its receipt key on stderr), like
    /// `age-keygen -y`.
    #[command(
        after_help = "Examples:\n  capvault recipient show --identity collector.identity\n  capvault recipient show -i - < collector.identity"
    )]
    Show(collector::ShowRecipientArgs),
}

fn run(cli: Cli) -> CliResult<()> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Demo(a) => demo::run(&a, json),
        Cmd::Init(a) => admin::init(&a, json),
        Cmd::Status(a) => admin::status(&a, json),
        Cmd::Verify(a) => admin::verify(&a, json),
        Cmd::Pause(a) => admin::pause(&a, json),
        Cmd::Resume(a) => admin::resume(&a, json),
        Cmd::Keys(KeysCmd::List(a)) => admin::keys_list(&a, json),
        Cmd::Keys(KeysCmd::Rotate(a)) => admin::keys_rotate(&a, json),
        Cmd::Seal(a) => admin::seal(&a, json),
        Cmd::Ack(a) => admin::ack(&a, json),
        Cmd::Erase(a) => admin::erase(&a, json),
        Cmd::Enroll(a) => admin::enroll(&a, json),
        Cmd::Show(a) => admin::show(&a),
        Cmd::Audit(a) => admin::audit(&a, json),
        Cmd::Recipient(RecipientCmd::New(a)) => collector::recipient_new(&a, json),
        Cmd::Recipient(RecipientCmd::Show(a)) => collector::recipient_show(&a, json),
        Cmd::Open(a) => collector::open(&a, json),
        Cmd::Receipt(a) => collector::receipt(&a, json),
        Cmd::Upload(a) => upload::run(&a, json),
        Cmd::Serve(a) => admin::serve(&a),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (2).
            let code = if e.use_stderr() { 2 } else { 0 };
            // Its usage errors quote the offending value: never an identity.
            let plain = e.render().to_string();
            if secrets::holds_identity(&plain) {
                eprint!("{}", secrets::redact(&plain));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    let env = ["CAPVAULT_VAULT", "CAPVAULT_USER", "CAPVAULT_UPLOAD_TOKEN"]
        .map(|name| (name, std::env::var_os(name)));
    let result = secrets::check_args(std::env::args_os(), &env)
        .map_err(CliError::usage)
        .and_then(|()| run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError { code, message }) => {
            if !message.is_empty() {
                eprintln!("error: {}", output::plain(&secrets::redact(&message)));
            }
            ExitCode::from(code)
        }
    }
}
