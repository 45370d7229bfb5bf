//! Events, published as upstream's recorder shows them.
//!
//! kube-runtime's `Recorder` folds a repeat of an Event (same type, reason, action, object)
//! into a series on the first one, keeping the first note; client-go's recorder folds only
//! repeats of the same message, so a changed message is a new Event. An operator reading
//! "500 addresses were skipped" after the Endpoints grew to 1,700 addresses would be misled,
//! so each (object, reason) keeps the note it last published, and a different note starts a
//! fresh series. Notes are cut to the 1 KiB the events API takes.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::lock;

/// Longest note events.k8s.io/v1 accepts, in bytes.
const MAX_NOTE_BYTES: usize = 1024;
/// Subjects remembered before the record is started over (a fresh series for each after it).
const MAX_SUBJECTS: usize = 4096;

/// (namespace, kind, name, uid, reason) of an Event.
type Subject = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// One controller's Events.
pub(crate) struct EventSink {
    client: kube::Client,
    reporter: Reporter,
    last: Mutex<HashMap<Subject, (String, Recorder)>>,
}

impl EventSink {
    pub(crate) fn new(client: kube::Client, reporter: Reporter) -> Self {
        EventSink {
            client,
            reporter,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `regarding`; a failure is logged, never returned (an Event is
    /// worth no retry of the sync that made it).
    pub(crate) async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = cut_note(note);
        let recorder = {
            let subject = (
                regarding.namespace.clone(),
                regarding.kind.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
                reason.to_owned(),
            );
            let mut last = lock(&self.last);
            match last.get(&subject) {
                Some((previous, recorder)) if *previous == note => recorder.clone(),
                _ => {
                    if last.len() >= MAX_SUBJECTS {
                        last.clear();
                    }
                    let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
                    last.insert(subject, (note.clone(), recorder.clone()));
                    recorder
                }
            }
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, regarding).await {
            tracing::debug!(error = %e, reason, "could not publish event");
        }
    }
}

/// The note within [`MAX_NOTE_BYTES`], cut on a character boundary with `...` when too long.
fn cut_note(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES - 3;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str("...");
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_events_api() {
        assert_eq!(cut_note("short".into()), "short");
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(cut_note(exact.clone()), exact);
        let long = cut_note("é".repeat(MAX_NOTE_BYTES));
        assert!(
            long.len() <= MAX_NOTE_BYTES && long.ends_with("..."),
            "{}",
            long.len()
        );
    }
}
