"""Screenshot of the chat demo after one real turn, taken in headless Chromium.

    apt-get install chromium && pip install playwright
    python scripts/screenshot_demo.py --model runs/ml100k/model --liked "Star Wars" "Return of the Jedi" --out demo.png

Serves `training.demo` on 127.0.0.1, picks the liked items in the searchable list as a person
would (type, choose), sends one message, waits for the answer and saves a PNG of the page.
"""

import argparse
import logging
import os

from playwright.sync_api import sync_playwright

from modeling_ilm import ILMForConditionalGeneration, ILMProcessor
from training.demo import build_demo

# as on this machine's closed network: no background connections, no sandbox as root
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--liked", nargs="+", default=["Star Wars", "Return of the Jedi"], help="text typed in the search box, first match chosen")
    p.add_argument("--message", default="What movie should I watch next?")
    p.add_argument("--noun", default="movie")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    p.add_argument("--out", default="demo.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = ILMForConditionalGeneration.from_pretrained(args.model).eval()
    processor = ILMProcessor.from_pretrained(args.model)
    demo = build_demo(model, processor, noun=args.noun)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(demo.local_url)
            search = page.get_by_label(f"{args.noun.capitalize()}s you liked (type to search)")
            for text in args.liked:
                search.click()
                search.fill(text)
                page.get_by_role("option").first.click()
            page.get_by_label("Message").fill(args.message)
            page.get_by_role("button", name="Send").click()
            page.locator(".message.bot, [data-testid='bot']").first.wait_for(timeout=120_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
