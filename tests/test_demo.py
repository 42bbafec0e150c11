"""The Gradio chat demo (training/demo.py), served for real on 127.0.0.1 and driven by gradio_client."""

import pytest
import torch

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training.demo import ChatSession, build_demo

gradio_client = pytest.importorskip("gradio_client", reason="the demo extra: pip install -e '.[demo]'")

TITLES = ["toy story 1995", "toy story 2", "heat", "heat 1995", "casino 1996", "babe"]
CATALOG = {"items": [{"item_id": str(i), "title": t} for i, t in enumerate(TITLES, 1)], "users": [{"user_id": "1"}]}


@pytest.fixture(scope="module")
def processor(tiny_components):
    return ILMProcessor.from_components(tiny_components["llm"], catalog=CATALOG, num_query_tokens=2)


@pytest.fixture(scope="module")
def model(tiny_components, processor):
    torch.manual_seed(0)
    model = ILMForConditionalGeneration.from_components(
        tiny_components["llm"], tiny_components["bert"], item_token_id=processor.item_token_id, user_token_id=processor.user_token_id,
        num_query_tokens=2, item_embeddings=torch.randn(6, 8), user_embeddings=torch.randn(1, 8),
    )
    model.enable_ranking_head(ranking_dim=8)
    return model.eval()


def test_session_states_each_liked_item_once_and_keeps_typed_placeholders_as_text(processor):
    session = ChatSession()
    assert session.add_user_turn("what next ?", ["2", "3"], processor) == "I liked toy story 2; heat. what next ?"
    session.add_answer("babe")
    assert session.add_user_turn("is <item> good for <user> ?", ["3", "5"], processor) == "I liked casino 1996. is <item> good for <user> ?"
    assert session.item_ids == ["2", "3", "5"]
    assert [m["content"] for m in session.messages] == ["I liked <item>, <item>. what next ?", "babe", "I liked <item>. is \\<item> good for \\<user> ?"]
    batch = processor(messages=session.messages, item_ids=session.item_ids)  # the typed one binds no id
    assert int((batch["input_ids"] == processor.item_token_id).sum()) == 3 * 2


def test_demo_served_answers_with_catalog_items(model, processor):
    demo = build_demo(model, processor, top_k=3, noun="movie")
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        liked = ["2", "3"]
        message, chat, top = client.predict("recommend a comedy", liked, True, api_name="/respond")
        assert message == "" and len(chat) == 2
        texts = [part["text"] for turn in chat for part in turn["content"]]
        assert texts[0] == "I liked toy story 2; heat. recommend a comedy"
        answer = texts[1]
        assert processor.match_item(answer) not in (None, *liked), answer  # a catalog item, not one the user named
        listed = [row[0] for row in top["data"]]
        assert len(listed) == 3 and set(listed) <= set(TITLES) - {"toy story 2", "heat"}
        scores = [row[1] for row in top["data"]]
        assert scores == sorted(scores, reverse=True)

        _, chat, _ = client.predict("hello world", [], False, api_name="/respond")  # the same session goes on
        assert [turn["role"] for turn in chat] == ["user", "assistant"] * 2
        with pytest.raises(Exception, match="Type a message or pick some items"):
            client.predict("  ", [], True, api_name="/respond")
        _, chat, top = client.predict(api_name="/clear")
        assert chat == [] and top["data"] in ([], [[]], [["", ""]])
    finally:
        demo.close()
