//! Lease traces as people read them: one line per event, with the time.

use std::fmt::Write as _;

use stateright::Path;

use super::{Holder, LeaseAction, LeaseState};

/// The path as timed lines.
pub fn render(path: &Path<LeaseState, LeaseAction>, property: &str) -> String {
    let mut out = format!("property: {property}\n");
    let mut now = 0u32;
    let steps = path.clone().into_vec();
    for (index, (state, action)) in steps.iter().enumerate() {
        let Some(action) = *action else {
            let _ = writeln!(out, "t={now:>2}s end: {}", describe(state));
            break;
        };
        if action == LeaseAction::Tick {
            now += 1;
            continue;
        }
        let after = &steps[index + 1].0;
        let _ = writeln!(out, "t={now:>2}s {}", line(state, action, after));
    }
    if let Some(first) = path.clone().into_states().first() {
        let start = match first.to_client {
            Some(m) => format!("the acquisition's last reply needs {}s", m.left),
            None => "the acquisition's last reply is lost".to_owned(),
        };
        out.insert_str(
            out.find('\n').map_or(0, |i| i + 1),
            &format!("t= 0s the server hears the holder's last acquisition query; {start}\n"),
        );
    }
    out
}

fn delay(delay: Option<u8>) -> String {
    delay.map_or_else(|| "lost".to_owned(), |d| format!("arrives in {d}s"))
}

fn line(state: &LeaseState, action: LeaseAction, after: &LeaseState) -> String {
    match action {
        LeaseAction::Tick => String::new(),
        LeaseAction::Beat(d) => format!("heartbeat sends its pg_locks query: {}", delay(d)),
        LeaseAction::ServerReplies(d) => match state.session {
            Some(_) => format!("the server hears the query and answers: {}", delay(d)),
            None => "the query meets an ended session: the connection is reset".to_owned(),
        },
        LeaseAction::ClientReceives => match (state.holder, state.to_client) {
            (Holder::Acquiring, _) if after.holder == Holder::Stopped => {
                "the acquisition's reply comes a lease after its query: acquire() gives up"
                    .to_owned()
            }
            (Holder::Acquiring, _) => {
                "the holder gets the acquisition's reply and builds the guard: lease clock starts"
                    .to_owned()
            }
            (_, Some(m)) => format!("the holder gets a confirmation sent {}s ago", m.sent_age),
            _ => "the holder gets a reply".to_owned(),
        },
        LeaseAction::QueryFails => "the lost query errors out; no confirmation".to_owned(),
        LeaseAction::AcquireFails => "acquire() fails: the program ends".to_owned(),
        LeaseAction::WatchdogFires => {
            "watchdog: no confirmation for a lease: SIGTERM, exit within the grace".to_owned()
        }
        LeaseAction::ShutdownDone => "the program's shutdown finishes".to_owned(),
        LeaseAction::ExitAfterGrace => "grace over: exit(70)".to_owned(),
        LeaseAction::SessionEnds => match state.holder {
            Holder::Stopped => {
                "the server ends the session (connection closed); the standby gets the lock"
                    .to_owned()
            }
            _ => "the server ends the silent session; the standby gets the lock".to_owned(),
        },
    }
}

fn describe(state: &LeaseState) -> String {
    let holder = match state.holder {
        Holder::Acquiring => "holder still acquiring".to_owned(),
        Holder::Running { silent, .. } => {
            format!("holder RUNNING, {silent}s since its last confirmation")
        }
        Holder::Stopping { left } => format!("holder still RUNNING its shutdown, exits in {left}s"),
        Holder::Stopped => "holder stopped".to_owned(),
    };
    let standby = if state.standby {
        "standby holds the lock"
    } else {
        "standby waiting"
    };
    format!("{holder}; {standby}")
}
