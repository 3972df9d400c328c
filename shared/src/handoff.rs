//! Whether a shopper's message asks to talk to a person: the check that
//! still works offline (no key, Claude failing). Claude, when it answers,
//! recognises requests in any wording; this covers the common ones in
//! English, Spanish, French, German, Portuguese and Italian.
//!
//! A message asks for a person when one of its phrases (the parts between
//! sentence and comma punctuation) does one of these:
//!
//! - talks to a person: "can I talk to a human", "speak with someone",
//!   "live chat with staff", "how do I reach a real person", "hablar con
//!   una persona", "parler à un humain", "falar com um atendente",
//!   "parlare con un operatore", and German's verb-last "mit einem Menschen
//!   sprechen";
//! - asks to be put through: "connect me to an agent", "transfer me to a
//!   rep", "pásame con un agente";
//! - asks for a person, who then ends the phrase or is followed by a word
//!   like "please", "now", "who", "to" or "from": "I want an agent", "get
//!   me a real person", "I need someone to help", "is there a person I can
//!   talk to", "quiero un humano", "ich will einen Menschen";
//! - names a person and nothing else: "human", "agent please", "customer
//!   service rep";
//! - asks a person to call back: "can someone call me".
//!
//! A person is a word like human, person, agent, representative, rep,
//! someone, staff, operator, manager or customer service (and their
//! counterparts in the other languages), after at most three words like
//! "a", "the", "real", "live" or "support".
//!
//! Not requests, by design:
//!
//! - questions about who is answering: "is this a human?", "are you a
//!   bot?", "am I talking to a real person?" ("talking" describes, "talk
//!   to" asks);
//! - people in other roles: "the person who delivered my parcel was rude",
//!   "can my agent pick it up", "I spoke to an agent yesterday", "do I need
//!   someone to sign for it?" (a phrase opening with "do", "does", "did",
//!   "will", "should" or "must" asks about a person, not for one);
//! - the words used otherwise: "human-powered bikes", "do you sell agent
//!   provocateur perfume", "I want a human-sized sleeping bag" (after a
//!   "want" verb a person must end the phrase or be followed by one of the
//!   words above);
//! - a request negated in the five words before it: "I don't want to talk
//!   to a human" ("why can't I talk to a human?" is still a request).

/// Verbs that reach a person named right after them.
const TALK: &[&str] = &[
    // English
    "talk to",
    "talk with",
    "speak to",
    "speak with",
    "chat with",
    "chat to",
    "reach",
    "contact",
    "get hold of",
    "get through to",
    "connect me to",
    "connect me with",
    "transfer me to",
    "put me through to",
    "pass me to",
    "hand me over to",
    "escalate to",
    "escalate this to",
    // Spanish
    "hablar con",
    "chatear con",
    "comunicarme con",
    "comunicame con",
    "pasame con",
    "ponme con",
    "contactar con",
    // French
    "parler a",
    "parler avec",
    "discuter avec",
    "en relation avec",
    "passez moi",
    "joindre",
    // German (the verb-first orders)
    "sprechen mit",
    "reden mit",
    "verbinden sie mich mit",
    "verbinde mich mit",
    // Portuguese
    "falar com",
    "conversar com",
    "me passa para",
    "transferir para",
    // Italian
    "parlare con",
    "chattare con",
    "passami",
    "mettermi in contatto con",
];

/// Verbs that ask for a person, who must then end the phrase or be followed
/// by a word in `AFTER_PERSON`.
const WANT: &[&str] = &[
    "want",
    "need",
    "d like",
    "would like",
    "get me",
    "give me",
    "find me",
    "can i have",
    "can i get",
    "could i have",
    "could i get",
    "may i have",
    "request",
    "requesting",
    "ask for",
    "asking for",
    "prefer",
    "is there",
    "are there",
    "quiero",
    "necesito",
    "quisiera",
    "me gustaria",
    "je veux",
    "je voudrais",
    "j aimerais",
    "je souhaite",
    "il me faut",
    "ich will",
    "ich mochte",
    "ich moechte",
    "ich brauche",
    "quero",
    "preciso de",
    "gostaria de",
    "voglio",
    "vorrei",
    "ho bisogno di",
    "mi serve",
];

/// German puts the verb last: "mit" + person + one of these, close behind.
const GERMAN_TALK_LAST: &[&str] = &[
    "sprechen",
    "reden",
    "chatten",
    "schreiben",
    "telefonieren",
    "verbunden",
    "verbinden",
];

/// Words that may follow a person asked for.
const AFTER_PERSON: &[&str] = &[
    "please",
    "pls",
    "plz",
    "now",
    "asap",
    "instead",
    "right",
    "today",
    "immediately",
    "who",
    "that",
    "to",
    "i",
    "from",
    "available",
    "being",
    "thanks",
    "thank",
    "por",
    "svp",
    "s",
    "bitte",
    "per",
    "ahora",
    "ya",
    "maintenant",
    "jetzt",
    "sofort",
    "agora",
    "subito",
    "que",
    "qui",
    "der",
    "die",
    "che",
    "para",
    "pour",
];

/// What a person is called. Multi-word entries are matched whole.
const PERSON: &[&str] = &[
    "human",
    "humans",
    "human being",
    "person",
    "agent",
    "agents",
    "representative",
    "rep",
    "someone",
    "somebody",
    "anyone",
    "anybody",
    "staff",
    "operator",
    "employee",
    "manager",
    "supervisor",
    "advisor",
    "adviser",
    "customer service",
    "customer support",
    "customer care",
    "your team",
    "persona",
    "humano",
    "agente",
    "representante",
    "alguien",
    "asesor",
    "asesora",
    "operador",
    "operadora",
    "humain",
    "personne",
    "conseiller",
    "conseillere",
    "quelqu un",
    "operateur",
    "operatrice",
    "service client",
    "mensch",
    "menschen",
    "mitarbeiter",
    "mitarbeiterin",
    "jemand",
    "jemandem",
    "jemanden",
    "berater",
    "beraterin",
    "kundendienst",
    "kundenservice",
    "pessoa",
    "atendente",
    "alguem",
    "umano",
    "operatore",
    "operatrice",
    "qualcuno",
    "consulente",
];

/// Words that may stand before a person: articles and the like.
const BEFORE_PERSON: &[&str] = &[
    "a",
    "an",
    "the",
    "some",
    "one",
    "real",
    "live",
    "actual",
    "proper",
    "support",
    "un",
    "una",
    "uno",
    "el",
    "la",
    "le",
    "l",
    "real",
    "vrai",
    "vraie",
    "veritable",
    "ein",
    "eine",
    "einen",
    "einem",
    "einer",
    "echten",
    "echte",
    "echter",
    "richtigen",
    "um",
    "uma",
    "o",
    "vero",
    "vera",
];

/// Asking a person to get in touch: "can someone call me".
const CALL_ME: &[&str] = &[
    "call me",
    "contact me",
    "phone me",
    "ring me",
    "get back to me",
];

/// How many words back a negation still applies ("don't" is "don t", so
/// "I don't really want to talk to" needs five).
const NEGATION_REACH: usize = 5;

/// Words that negate a request a few words later.
const NEGATIONS: &[&str] = &[
    "not", "never", "no", "don", "dont", "doesn", "didn", "won", "nicht", "kein", "ne", "pas",
    "nao", "non", "nunca", "jamais",
];

/// Whether the message explicitly asks to talk to a person (see the module
/// doc for what counts).
pub fn asks_for_person(message: &str) -> bool {
    phrases(message).iter().any(|words| phrase_asks(words))
}

fn phrase_asks(words: &[String]) -> bool {
    if person_at(words, 0).is_some_and(|end| only_courtesy_after(words, end)) {
        return true;
    }
    (0..words.len()).any(|at| !negated(words, at) && request_at(words, at))
}

fn request_at(words: &[String], at: usize) -> bool {
    let talks = TALK
        .iter()
        .filter_map(|verb| phrase_at(words, at, verb))
        .any(|end| person_at(words, end).is_some());
    let wants = !asks_whether(words)
        && WANT
            .iter()
            .filter_map(|verb| phrase_at(words, at, verb))
            .filter_map(|end| person_at(words, end))
            .any(|end| end == words.len() || AFTER_PERSON.contains(&words[end].as_str()));
    let german = phrase_at(words, at, "mit")
        .and_then(|end| person_at(words, end))
        .is_some_and(|end| {
            words[end..]
                .iter()
                .take(3)
                .any(|w| GERMAN_TALK_LAST.contains(&w.as_str()))
        });
    let call_back = person_at(words, at).is_some_and(|end| {
        CALL_ME
            .iter()
            .any(|call| phrase_at(words, end, call).is_some())
    });
    talks || wants || german || call_back
}

/// A yes/no question ("do I need someone to sign?") asks about a person,
/// not for one.
fn asks_whether(words: &[String]) -> bool {
    words.first().is_some_and(|w| {
        matches!(
            w.as_str(),
            "do" | "does" | "did" | "will" | "should" | "must"
        )
    })
}

/// Where a person named at `at` ends: after up to three words like "a" or
/// "real", one or more person words ("customer service rep").
fn person_at(words: &[String], at: usize) -> Option<usize> {
    let fillers = words[at.min(words.len())..]
        .iter()
        .take(3)
        .take_while(|w| BEFORE_PERSON.contains(&w.as_str()))
        .count();
    let mut end = at + fillers;
    let mut found = false;
    while let Some(next) = PERSON.iter().filter_map(|p| phrase_at(words, end, p)).max() {
        end = next;
        found = true;
    }
    found.then_some(end)
}

/// Nothing but courtesy after the person: "human please", "agent!".
fn only_courtesy_after(words: &[String], end: usize) -> bool {
    words[end..].iter().all(|w| {
        matches!(
            w.as_str(),
            "please" | "pls" | "plz" | "now" | "asap" | "por" | "favor" | "svp" | "bitte"
        )
    })
}

fn negated(words: &[String], at: usize) -> bool {
    words[at.saturating_sub(NEGATION_REACH)..at]
        .iter()
        .any(|w| NEGATIONS.contains(&w.as_str()))
}

/// Where `phrase` (space-separated words) ends when it starts at `at`.
fn phrase_at(words: &[String], at: usize, phrase: &str) -> Option<usize> {
    let mut end = at;
    for part in phrase.split(' ') {
        if words.get(end)? != part {
            return None;
        }
        end += 1;
    }
    Some(end)
}

/// The message's phrases, each as lower-cased words with accents dropped
/// ("pásame" is "pasame"); apostrophes split words ("quelqu'un" is
/// "quelqu un", "I'd" is "i d").
fn phrases(message: &str) -> Vec<Vec<String>> {
    message
        .split(['.', ',', ';', ':', '!', '?', '¿', '¡', '(', ')', '\n'])
        .map(|phrase| {
            phrase
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(fold)
                .collect::<Vec<_>>()
        })
        .filter(|words| !words.is_empty())
        .collect()
}

/// Lower case without the accents of the languages above.
fn fold(word: &str) -> String {
    word.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (message, whether it asks for a person)
    const PHRASINGS: &[(&str, bool)] = &[
        ("can I talk to a human?", true),
        ("I want an agent", true),
        ("get me a real person", true),
        ("Can I speak with someone about my order?", true),
        ("customer service rep", true),
        ("live chat with staff please", true),
        ("human please", true),
        ("connect me to a representative", true),
        ("I'd like to speak to a manager", true),
        ("Is there a person I can talk to?", true),
        ("are you a bot? I want a human", true),
        ("can someone call me back", true),
        ("I need a real human, now", true),
        ("why can't I talk to a person??", true),
        ("operator!", true),
        ("TALK TO A HUMAN", true),
        ("I want to speak to customer service", true),
        ("transfer me to a live agent", true),
        ("how do I reach a real person", true),
        ("hablar con una persona", true),
        ("¿Puedo hablar con un humano, por favor?", true),
        ("Quiero un agente", true),
        ("parler à un humain", true),
        ("Je voudrais parler à quelqu'un", true),
        ("Ich möchte mit einem Menschen sprechen", true),
        ("Kann ich mit einem Mitarbeiter reden?", true),
        ("Quero falar com um atendente", true),
        ("Posso parlare con un operatore?", true),
        ("Voglio un operatore", true),
        ("is this a human?", false),
        ("are you a bot?", false),
        ("am I talking to a real person?", false),
        ("human-powered bikes", false),
        ("do you sell agent provocateur perfume", false),
        ("the person who delivered my parcel was rude", false),
        (
            "I don't want to talk to a human, just tell me the return policy",
            false,
        ),
        ("can my agent pick up the order for me?", false),
        ("I spoke to an agent yesterday about a refund", false),
        ("talk to you later!", false),
        ("Do you have a tent for 4 people?", false),
        ("I want a human-sized sleeping bag", false),
        ("Does a real person read these messages?", false),
        ("I need a refund", false),
        ("Do I need someone to sign for the delivery?", false),
        ("does a person have to be home for the delivery", false),
        ("where is my order?", false),
        ("¿Eres un humano?", false),
        ("Bist du ein Mensch?", false),
        ("Est-ce que vous êtes un robot ?", false),
        ("No quiero hablar con una persona", false),
        ("", false),
    ];

    #[test]
    fn explicit_requests_for_a_person_are_recognised_and_near_misses_are_not() {
        let wrong: Vec<String> = PHRASINGS
            .iter()
            .filter(|(message, want)| asks_for_person(message) != *want)
            .map(|(message, want)| format!("{message:?} should be {want}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(PHRASINGS.len() >= 30);
    }

    #[test]
    fn words_are_folded_and_split_at_apostrophes() {
        assert_eq!(
            phrases("Pásame con ALGUIEN, s'il vous plaît!"),
            [
                vec!["pasame", "con", "alguien"],
                vec!["s", "il", "vous", "plait"]
            ]
        );
    }
}
