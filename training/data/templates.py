"""Phase-2 prompt templates and the item/user placeholders they render to.

A template is a tuple of message texts alternating user / assistant, the last one being the answer.
Fields in braces are filled from an example's facts: plain text, or a Ref, which renders as one
placeholder per id (comma separated, or one per line) and appends the ids to the example's item_ids /
user_ids in order of appearance (a Ref shown by titles alone adds none). {noun} is the catalog's item
noun ("movie" by default).

The LAST template of every task is held out: it is used only by the *_unseen splits.
A template is used for an example only when the example has every field it names.
"""

import string
from dataclasses import dataclass

from modeling_ilm.configuration_ilm import ITEM_TOKEN, USER_TOKEN


@dataclass(frozen=True)
class Ref:
    kind: str  # "item" or "user"
    ids: tuple
    titled: bool = False  # each item as its title then its placeholder (LLaRA's hybrid rendering)
    lines: bool = False  # one entity per line ("\n- Heat (1995) <item>"): titles hold commas, so a comma list blurs where one ends
    tokens: bool = True  # False (titled only): the title alone, no placeholder
    tokens_first: bool = False  # (titled) the placeholder then the title ("<item> Heat (1995)")
    # (tokens_first) False: no space between them ("<item>Heat (1995)"), so the title is tokenized as an
    # answer at the start of a turn writes it ("T", "oy" for Toy, not " Toy"): an answer copies it token for token
    spaced: bool = True


def items(*ids, titled=False, lines=False, tokens=True, tokens_first=False, spaced=True):
    if not (titled or tokens):
        raise ValueError("An item shown without its item tokens needs its title (titled=True).")
    if tokens_first and not (titled and tokens):
        raise ValueError("tokens_first orders an item's tokens and title: it needs titled=True and tokens=True.")
    if not (spaced or tokens_first):
        raise ValueError("spaced=False joins an item's tokens to the title after them: it needs tokens_first=True.")
    return Ref("item", tuple(ids), titled, lines, tokens, tokens_first, spaced)


def user(uid):
    return Ref("user", (uid,))


TEMPLATES = {
    "item_title": [
        ("What {noun} is this? {item}", "{title}"),
        ("{item} Which {noun} is this? Answer with its title.", "{title}"),
        ("Tell me the title of this {noun}: {item}", "{title}"),
        ("Here is a {noun}: {item}. What is it called?", "{title}"),
        ("Name the {noun} {item}.", "{title}"),
    ],
    "item_genres": [
        ("What genres does this {noun} belong to? {item}", "{genres}"),
        ("{item} List the genres of this {noun}.", "{genres}"),
        ("Which genres describe the {noun} {item}?", "{genres}"),
        ("How would you categorize {item}? Reply with its genres.", "{genres}"),
    ],
    "item_year": [
        ("In what year was this {noun} released? {item}", "{year}"),
        ("{item} What is the release year of this {noun}?", "{year}"),
        ("When did {item} come out? Answer with the year.", "{year}"),
        ("Tell me the year of release of {item}.", "{year}"),
    ],
    "next_item_title": [
        ("User {user} has interacted with items {history}. What is the next recommendation?", "{title}"),
        ("Here are the {noun}s a user chose, oldest first: {history}. Which {noun} will they choose next?", "{title}"),
        ("{history} These are the latest {noun}s of {user}, in order. Predict the title of the next one.", "{title}"),
        ("Given the history {history}, recommend the next {noun} for this user.", "{title}"),
        ("A user's recent {noun}s, in order: {history}. What do they pick next? Give the title.", "{title}"),
    ],
    "candidate_selection": [
        (
            "User {user} has interacted with {history}. Which of these {noun}s will they choose next? {candidates}",
            "{title}",
        ),
        (
            "History: {history}\nCandidates: {candidates}\nPick the candidate the user is most likely to choose next and give its title.",
            "{title}",
        ),
        ("Based on the {noun}s {history}, which one of the following should be recommended? {candidates}", "{title}"),
        ("Choose the next {noun} for {user} from {candidates}. Their history: {history}.", "{title}"),
    ],
    "user_profile": [
        ("Describe this user: {user}", "{profile}"),
        ("{user} Who is this user?", "{profile}"),
        ("What do we know about the user {user}?", "{profile}"),
        ("Give a short profile of {user}.", "{profile}"),
    ],
    "user_rating": [
        ("How would user {user} rate the {noun} {item} on a scale of {low} to {high}?", "{rating}"),
        ("{user} interacted with {item}. Predict their rating from {low} to {high}.", "{rating}"),
        ("What rating ({low}-{high}) did {user} give to {item}?", "{rating}"),
        ("Rate {item} as {user} would, from {low} to {high}. Reply with a number.", "{rating}"),
    ],
    "similar_item": [
        ("{item} Name a {noun} that people often choose right before or after this one.", "{partner_title}"),
        ("Which {noun} is often enjoyed together with {item}?", "{partner_title}"),
        ("People who picked {item} often picked another {noun} next to it. What is its title?", "{partner_title}"),
        ("Suggest a {noun} commonly consumed alongside {item}.", "{partner_title}"),
    ],
    # The answer of a conversation is its last assistant turn.
    "conversation": [
        (
            "Hi! Recently I enjoyed {liked}. Can you recommend a {noun} from the {genre} genre?",
            "You could try {title}.",
            "Sounds good. When was it released?",
            "It came out in {year}.",
        ),
        (
            "I'm {user}. Lately I liked {liked}.",
            "Nice picks. What are you in the mood for now?",
            "Something in the {genre} genre.",
            "Then I recommend {title}.",
        ),
        (
            "My favourite {noun}s lately: {liked}. What is the first one called again?",
            "That is {liked_title}.",
            "Right! Now recommend me a {noun} from the {genre} genre.",
            "How about {title}?",
        ),
        (
            "I liked {liked}. Any {genre} {noun} you would suggest?",
            "Try {title}.",
            "Anything else like it?",
            "People who chose {title} often also picked {partner_title}.",
            "Is that one in the {genre} genre too?",
            "Yes, {partner_title} is in the {genre} genre too.",
        ),
        (
            "Here are {noun}s I liked: {liked}.",
            "Noted. What kind of {noun} would you like now?",
            "One from the {genre} genre, please.",
            "{title} would be a good fit.",
        ),
    ],
}
TASKS = tuple(TEMPLATES)


def template_fields(template):
    return {f for text in template for _, f, _, _ in string.Formatter().parse(text) if f}


def template_ids(task, unseen):
    """Ids of the seen (all but last) or held-out (last) templates of a task."""
    n = len(TEMPLATES[task])
    return [f"{task}/{i}" for i in (range(n - 1, n) if unseen else range(n - 1))]


def get_template(template_id):
    task, i = template_id.rsplit("/", 1)
    return TEMPLATES[task][int(i)]


def entity_title(titles, item_id):
    """An item's title for titled rendering; a title holding a placeholder would add an entity."""
    title = (titles or {}).get(item_id)
    if not title:
        raise ValueError(f"Item {item_id!r} has no title to render beside its placeholder.")
    if ITEM_TOKEN in title or USER_TOKEN in title:
        raise ValueError(f"The title of item {item_id!r} ({title!r}) contains a placeholder; it cannot be shown beside one.")
    return title


def shown_entity(ref, entity_id, placeholder, titles):
    """One entity of a Ref as the prompt shows it: its placeholder, its title and placeholder (or
    placeholder and title), or its title."""
    if not ref.titled:
        return placeholder
    title = entity_title(titles, entity_id)
    if not ref.tokens:
        return title
    if ref.tokens_first:
        return f"{placeholder}{' ' if ref.spaced else ''}{title}"
    return f"{title} {placeholder}"


def render(template, facts, titles=None):
    """Fill a template. Returns (messages, item_ids, user_ids) with ids in placeholder order.
    `titles` (item id -> title) is needed for titled Refs."""
    messages, ids = [], {"item": [], "user": []}
    for turn, text in enumerate(template):
        parts = []
        for literal, name, _, _ in string.Formatter().parse(text):
            parts.append(literal)
            if name is None:
                continue
            value = facts[name]
            if isinstance(value, Ref):
                placeholder = ITEM_TOKEN if value.kind == "item" else USER_TOKEN
                entries = [shown_entity(value, i, placeholder, titles) for i in value.ids]
                if value.lines:
                    parts[-1] = parts[-1].rstrip(" ")
                    parts.append("".join(f"\n- {entry}" for entry in entries))
                else:
                    parts.append(", ".join(entries))
                if value.tokens:
                    ids[value.kind].extend(value.ids)
            else:
                parts.append(str(value))
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": "".join(parts)})
    return messages, ids["item"], ids["user"]
