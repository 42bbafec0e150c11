"""Evaluation prompts: the phase-2 templates (training/data/templates.py) rendered without their
answer, for the ILM (item/user placeholders) or for text-only prompting (titles and user ids in
place of the placeholders, same template and wording)."""

import copy
import re
from dataclasses import dataclass

from modeling_ilm import ILMProcessor
from training.data.templates import ITEM_TOKEN, USER_TOKEN, get_template, items, render, user

CANDIDATE_TEMPLATE = "candidate_selection/0"  # seen in training; has {user}, {history}, {candidates}
NEXT_ITEM_TEMPLATE = "next_item_title/0"  # seen in training; has {user}, {history}
PLACEHOLDER = re.compile(f"{re.escape(ITEM_TOKEN)}|{re.escape(USER_TOKEN)}")


@dataclass
class Prompt:
    messages: list  # the chat up to (not including) the answer
    item_ids: list  # the id behind each <item>, in order of appearance
    user_ids: list


def render_prompt(template_id: str, titles=None, **facts) -> Prompt:
    """A template's turns before its answer, filled with `facts` (Refs for items and users;
    `titles`, item id -> title, for titled Refs)."""
    messages, item_ids, user_ids = render(get_template(template_id)[:-1], facts, titles)
    return Prompt(messages, item_ids, user_ids)


def recommendation_prompt(protocol, user_id: str, template_id: str, with_candidates: bool) -> Prompt:
    facts = {"user": user(user_id), "history": items(*protocol.history(user_id)), "noun": protocol.noun}
    if with_candidates:
        facts["candidates"] = items(*protocol.candidates[user_id], titled=protocol.candidate_titles, lines=protocol.candidate_lines, tokens=protocol.candidate_tokens,
                                     tokens_first=protocol.candidate_tokens_first, spaced=protocol.candidate_title_space)
    return render_prompt(template_id, titles=protocol.titles, **facts)


def phase2_prompt(row: dict) -> Prompt:
    """A phase-2 dataset row without its last (answer) turn."""
    return Prompt(row["messages"][:-1], list(row["item_ids"]), list(row["user_ids"]))


def as_text(prompt: Prompt, titles: dict) -> Prompt:
    """Titles in place of <item> and user ids in place of <user>: the text-only baseline's prompt.
    An item already shown as "Title <item>", "<item> Title" or "<item>Title" (titled rendering) becomes
    its title once."""
    queues = {ITEM_TOKEN: iter(prompt.item_ids), USER_TOKEN: iter(prompt.user_ids)}
    messages = []
    for message in prompt.messages:
        content, text = message["content"], ""
        end = 0
        for match in PLACEHOLDER.finditer(content):
            text += content[end : match.start()]
            entity = next(queues[match.group()])
            if match.group() == USER_TOKEN:
                text += entity
            elif text.endswith(f"{titles[entity]} "):
                text = text[:-1]  # its title is already there: drop the space before the placeholder
            elif content.startswith(f" {titles[entity]}", match.end()):
                end = match.end() + 1  # its title follows: drop the placeholder and the space after it
                continue
            elif content.startswith(titles[entity], match.end()):
                end = match.end()  # its title follows without a space: drop the placeholder
                continue
            else:
                text += titles[entity]
            end = match.end()
        messages.append({**message, "content": text + content[end:]})
    return Prompt(messages, [], [])


def text_processor(tokenizer, catalog: dict) -> ILMProcessor:
    """An ILMProcessor around a plain LLM's tokenizer, for text-only prompts (chat template, padding,
    title matching). The placeholders are added to a copy; text prompts never contain them."""
    tokenizer = copy.deepcopy(tokenizer)
    missing = [t for t in (ITEM_TOKEN, USER_TOKEN) if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return ILMProcessor(tokenizer, catalog=catalog, num_query_tokens=1)
