//! The conversation Claude sees: earlier turns merged so roles alternate,
//! within a character budget.

use serde::Serialize;

use crate::domain::{Sender, Turn};

/// One entry of the Messages API's `messages` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiMessage {
    pub role: &'static str,
    pub content: String,
}

/// Builds the `messages` array: the earlier messages (oldest first), merged
/// so roles alternate and the first is the user's, then the new message
/// exactly once, all within `char_budget` characters (the newest kept).
pub fn build_messages(history: &[Turn], new_message: &str, char_budget: usize) -> Vec<ApiMessage> {
    let mut merged = merge_roles(history, new_message);
    // Keep the newest turns that fit; the last one (holding the new message)
    // always stays, trimmed from the front if it alone is over budget.
    let mut used = 0usize;
    let mut keep_from = merged.len();
    for (i, (_, text)) in merged.iter().enumerate().rev() {
        let n = text.chars().count();
        if i + 1 < merged.len() && used + n > char_budget {
            break;
        }
        used += n;
        keep_from = i;
    }
    let mut kept: Vec<(Sender, String)> = merged.split_off(keep_from);
    if let Some((_, last)) = kept.last_mut() {
        let n = last.chars().count();
        if n > char_budget {
            *last = last.chars().skip(n - char_budget).collect();
        }
    }
    while kept.first().is_some_and(|(s, _)| *s == Sender::Ai) {
        kept.remove(0);
    }
    kept.into_iter()
        .map(|(s, content)| ApiMessage {
            role: if s == Sender::User {
                "user"
            } else {
                "assistant"
            },
            content,
        })
        .collect()
}

/// Consecutive messages of one sender joined, the new message last.
fn merge_roles(history: &[Turn], new_message: &str) -> Vec<(Sender, String)> {
    let mut merged: Vec<(Sender, String)> = Vec::new();
    let newest = (Sender::User, new_message);
    for (sender, text) in history
        .iter()
        .map(|t| (t.sender, t.text.as_str()))
        .chain(std::iter::once(newest))
    {
        match merged.last_mut() {
            Some((s, joined)) if *s == sender => {
                joined.push_str("\n\n");
                joined.push_str(text);
            }
            _ => merged.push((sender, text.to_owned())),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sender: Sender, text: &str) -> Turn {
        Turn {
            sender,
            text: text.into(),
        }
    }

    #[test]
    fn turns_alternate_start_with_the_user_and_end_with_the_new_message_once() {
        let h = [
            t(Sender::Ai, "welcome"),
            t(Sender::User, "a"),
            t(Sender::User, "b"),
            t(Sender::Ai, "c"),
        ];
        let turns = build_messages(&h, "new", 10_000);
        let roles: Vec<_> = turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(turns[0].content, "a\n\nb");
        assert_eq!(turns[2].content, "new");
    }

    #[test]
    fn the_character_budget_keeps_the_newest_turns() {
        let h: Vec<_> = (0..50)
            .map(|i| {
                t(
                    if i % 2 == 0 { Sender::User } else { Sender::Ai },
                    &"x".repeat(1000),
                )
            })
            .collect();
        let turns = build_messages(&h, "latest question", 5_000);
        let total: usize = turns.iter().map(|t| t.content.chars().count()).sum();
        assert!(total <= 5_000, "{total}");
        assert_eq!(turns.first().unwrap().role, "user");
        assert_eq!(turns.last().unwrap().content, "latest question");
    }
}
