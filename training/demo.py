"""python -m training.demo --model DIR: a chat demo in the browser (Gradio: `pip install -e ".[demo]"`).

Pick the items you liked from the catalog (a searchable list), chat, and see what the model
recommends, with titles. The liked items enter the conversation as item tokens (`<item>`), so
the answer reads the CF embeddings, not the titles. With "Recommend from the catalog" ticked, the
answer is decoded among the catalog's titles, following the ranking head where the model has one
(`ILMPipeline(recommend=True)`); unticked, the LLM answers freely and the answer is matched to the
catalog afterwards.

    python -m training.demo --model runs/ml100k/model --noun movie  # http://127.0.0.1:7860
    python -m training.demo --model runs/ml100k/model --port 0   # any free port, printed
"""

import argparse
import logging
import os
import re

import torch

from modeling_ilm import ILMForConditionalGeneration, ILMPipeline, ILMProcessor
from modeling_ilm.configuration_ilm import ITEM_TOKEN, USER_TOKEN
from training import assets

log = logging.getLogger(__name__)


class ChatSession:
    """One conversation: the model-side messages (with `<item>` placeholders and their ids), the
    items already said (each liked item enters the chat once) and the chat as shown, with titles."""

    def __init__(self):
        self.messages, self.item_ids, self.shown = [], [], []

    def add_user_turn(self, text: str, liked_ids, processor) -> str:
        """Adds the user's turn (new liked items first, as item tokens) and returns how it reads
        with titles in place of the tokens."""
        new = [i for i in dict.fromkeys(liked_ids) if i not in self.item_ids]
        escaped = re.sub(f"({re.escape(ITEM_TOKEN)}|{re.escape(USER_TOKEN)})", r"\\\1", text)  # typed placeholders are text
        content, shown = escaped, text
        if new:
            content = f"I liked {', '.join([ITEM_TOKEN] * len(new))}. {escaped}".strip()
            shown = f"I liked {'; '.join(processor.item(i)['title'] for i in new)}. {text}".strip()
        self.messages.append({"role": "user", "content": content})
        self.shown.append({"role": "user", "content": shown})
        self.item_ids += new
        return shown

    def add_answer(self, answer: str):
        self.messages.append({"role": "assistant", "content": answer})
        self.shown.append({"role": "assistant", "content": answer})


def recommendations(model, processor, session: ChatSession, top_k: int) -> list:
    """[title, score] of the ranking head's top items for the conversation so far, the items it
    already holds left out; [] for a model without a ranking head."""
    if model.item_scorer is None or not session.messages:
        return []
    inputs = processor(messages=session.messages, item_ids=session.item_ids or None).to(model.device)
    with torch.no_grad():
        scores = model.score_items(**inputs)[0].float()
    scores[processor.rows(session.item_ids)] = float("-inf")
    top = scores.topk(min(top_k, int(torch.isfinite(scores).sum())))
    items = processor.catalog["items"]
    return [[items[row]["title"], round(score, 3)] for score, row in zip(top.values.tolist(), top.indices.tolist())]


def respond(pipe: ILMPipeline, session: ChatSession, message: str, liked_ids, recommend=True, top_k=5) -> tuple:
    """One turn: (the user's turn as shown, the answer, the catalog item it names or None, the top items)."""
    if not message.strip() and not liked_ids:
        raise ValueError("Type a message or pick some items you liked.")
    shown = session.add_user_turn(message, liked_ids or [], pipe.processor)
    out = pipe({"messages": session.messages, "item_ids": session.item_ids}, recommend=recommend)
    top = recommendations(pipe.model, pipe.processor, session, top_k)  # from the prompt the answer came from
    session.add_answer(out["generated_text"])
    return shown, out["generated_text"], out["item_id"], top


def build_demo(model, processor, top_k=5, noun="item"):
    """The Gradio app over a loaded model and processor (its API: `/respond` and `/clear`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    import gradio as gr

    pipe = ILMPipeline(model=model, processor=processor)
    choices = [(item.get("title") or item["item_id"], item["item_id"]) for item in processor.catalog["items"]]

    def on_send(message, liked_ids, recommend, session):
        session = session or ChatSession()
        try:
            shown, answer, item_id, top = respond(pipe, session, message, liked_ids, recommend, top_k)
        except ValueError as error:
            raise gr.Error(str(error))
        log.info("user: %s | answer: %s (item %s)", shown, answer, item_id)
        return "", list(session.shown), top, session

    def on_clear():
        return "", [], [], ChatSession()

    with gr.Blocks(title="ILM chat demo") as demo:
        gr.Markdown(f"# ILM chat demo\nPick {noun}s you liked, then ask. Liked {noun}s reach the model as item tokens.")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                liked = gr.Dropdown(choices=choices, multiselect=True, filterable=True, label=f"{noun.capitalize()}s you liked (type to search)")
                chat = gr.Chatbot(label="Conversation", height=360)
                message = gr.Textbox(label="Message", placeholder=f"What {noun} should I pick next?")
                with gr.Row():
                    recommend = gr.Checkbox(value=True, label="Recommend from the catalog")
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("Clear")
            with gr.Column(scale=1):
                top = gr.Dataframe(headers=["title", "score"], label=f"Recommended {noun}s (ranking head)", interactive=False)
        inputs, outputs = [message, liked, recommend, session], [message, chat, top, session]
        send.click(on_send, inputs, outputs, api_name="respond")
        message.submit(on_send, inputs, outputs, api_visibility="private")
        clear.click(on_clear, None, outputs, api_name="clear")
        chat.clear(on_clear, None, outputs, api_visibility="private")  # the chat's own bin icon starts over too
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="ILM folder (model + processor): a local path or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free one)")
    p.add_argument("--top-k", type=int, default=5, help="recommended items listed beside the chat")
    p.add_argument("--noun", default="item", help='what the items are called on the page ("movie")')
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: cuda when available)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    device = assets.device(args.device)
    model = ILMForConditionalGeneration.from_pretrained(args.model).to(device).eval()
    processor = ILMProcessor.from_pretrained(args.model)
    build_demo(model, processor, args.top_k, args.noun).launch(server_name=args.host, server_port=args.port or None)


if __name__ == "__main__":
    main()
