"""The offline demo sample: WARC files that exercise every stage of the pipeline.

Pages are generated from small sentence grammars written for this project (no
downloaded or copied text), with a fixed seed, so the files are identical on every
machine. Each file holds, in Common Crawl's record order (request, response,
metadata): long articles, boilerplate-heavy listing pages, keyword spam, pages that
repeat one paragraph, exact and near duplicates of articles, articles in French,
German and Spanish, and records that are not HTML pages (PDF, JSON, images, 404s,
redirects).
"""

from __future__ import annotations

import html
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tasks.warcwriter import metadata_record, request_record, response_record, warcinfo_record, write_warc

DEMO_CRAWL = "demo-local"
START = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)

TOPICS = {
    "gardening": ["apple tree", "vegetable bed", "greenhouse", "compost heap", "tomato plant", "herb border",
                  "allotment", "hedge", "orchard", "seed tray", "rose bush", "wheelbarrow", "water butt",
                  "potato patch", "garden shed"],
    "astronomy": ["telescope", "observatory", "comet", "moon", "galaxy", "star chart", "eclipse", "meteor shower",
                  "planet", "nebula", "lens", "night sky", "satellite", "logbook", "dome"],
    "cooking": ["loaf", "soup", "pasta", "bakery", "stew", "sauce", "kitchen", "oven", "recipe", "pie crust",
                "spice jar", "frying pan", "market stall", "bread dough", "cutting board"],
    "rivers": ["river", "stream", "flood", "riverbank", "stone bridge", "water mill", "estuary", "wetland",
               "fish ladder", "weir", "towpath", "canal", "spring", "reed bed", "ferry"],
    "cycling": ["cycle path", "bicycle", "mountain pass", "repair shop", "club ride", "tyre", "gear", "saddle",
                "headwind", "railway trail", "helmet", "pannier", "climb", "race", "chain"],
    "libraries": ["library", "reading room", "archive", "letter", "story hour", "mobile van", "register",
                  "catalogue", "manuscript", "map", "photograph", "shelf", "index card", "donation", "atlas"],
}
ADJECTIVES = ["old", "small", "quiet", "busy", "narrow", "famous", "local", "bright", "heavy", "careful", "early",
              "late", "simple", "wooden", "green", "cold", "warm", "distant", "modest", "patient", "new",
              "restored", "forgotten", "crowded", "gentle", "curious", "sturdy", "muddy", "tidy", "popular"]
VERBS = ["repaired", "described", "measured", "visited", "photographed", "replaced", "cleaned", "studied",
         "planned", "moved", "protected", "explored", "painted", "counted", "mapped", "borrowed", "opened",
         "closed", "improved", "recorded", "tested", "rebuilt", "watched", "shared", "noticed", "welcomed",
         "surveyed", "sketched", "carried", "discussed"]
PEOPLE = ["the volunteers", "my neighbour", "a retired teacher", "the council", "two students", "our guide",
          "the club secretary", "a visiting engineer", "the local newspaper", "her grandfather", "the warden",
          "several families"]
TIMES = ["Last spring", "Early on Sunday", "In the winter of that year", "After the storm", "Before the festival",
         "During the long holiday", "On a grey afternoon", "Later that month", "For many years",
         "Soon after dawn", "By the end of the season", "Twice a week"]
PLACES = ["near the old station", "beside the village green", "at the edge of town", "behind the church",
          "along the northern road", "in the valley", "on the hill", "across the square", "by the harbour",
          "under the railway arches", "next to the school", "outside the town hall"]
LINKS = ["while", "because", "although", "after", "before", "since", "whereas", "until"]
SAYS = ["said", "explained", "wrote", "told us", "insisted", "remembered", "noted", "argued"]
DETS = ["the", "a", "one", "that", "every", "this"]

OTHER_LANGUAGES = {
    "fr": ["Le petit village se trouve au bord de la rivière, entre les collines et la forêt.",
           "Chaque samedi, les habitants se retrouvent au marché pour acheter des légumes frais.",
           "La bibliothèque municipale a ouvert une nouvelle salle de lecture pour les enfants.",
           "Les randonneurs apprécient le sentier qui longe le canal jusqu'à l'ancien moulin.",
           "Le boulanger prépare son pain très tôt le matin, avant le lever du soleil.",
           "Pendant l'hiver, la neige couvre les toits et les rues deviennent très calmes.",
           "Les élèves de l'école ont planté des arbres fruitiers dans le jardin communal.",
           "Le musée présente une exposition sur l'histoire des ponts de la région."],
    "de": ["Das kleine Dorf liegt am Ufer des Flusses, zwischen den Hügeln und dem Wald.",
           "Jeden Samstag treffen sich die Bewohner auf dem Markt, um frisches Gemüse zu kaufen.",
           "Die Stadtbibliothek hat einen neuen Lesesaal für Kinder eröffnet.",
           "Wanderer schätzen den Weg, der am Kanal entlang bis zur alten Mühle führt.",
           "Der Bäcker backt sein Brot sehr früh am Morgen, noch vor Sonnenaufgang.",
           "Im Winter bedeckt der Schnee die Dächer, und die Straßen werden sehr ruhig.",
           "Die Schüler haben im Gemeinschaftsgarten mehrere Obstbäume gepflanzt.",
           "Das Museum zeigt eine Ausstellung über die Geschichte der Brücken in der Region."],
    "es": ["El pequeño pueblo está a orillas del río, entre las colinas y el bosque.",
           "Cada sábado los vecinos se reúnen en el mercado para comprar verduras frescas.",
           "La biblioteca municipal ha abierto una nueva sala de lectura para los niños.",
           "Los excursionistas disfrutan del sendero que sigue el canal hasta el viejo molino.",
           "El panadero prepara el pan muy temprano, antes de que salga el sol.",
           "Durante el invierno la nieve cubre los tejados y las calles se quedan tranquilas.",
           "Los alumnos de la escuela plantaron árboles frutales en el huerto comunitario.",
           "El museo presenta una exposición sobre la historia de los puentes de la región."],
}

SPAM_WORDS = ["cheap", "best", "price", "watches", "casino", "bonus", "free", "deal", "discount", "online", "buy", "now"]
NAV = ["Home", "News", "Sport", "Weather", "About us", "Contact", "Shop", "Events", "Archive", "Login"]


def _noun_phrase(rng: random.Random, nouns: list[str]) -> str:
    if rng.random() < 0.6:
        return f"{rng.choice(DETS)} {rng.choice(ADJECTIVES)} {rng.choice(nouns)}"
    return f"{rng.choice(DETS)} {rng.choice(nouns)}"


def sentence(rng: random.Random, nouns: list[str]) -> str:
    """One sentence from a small grammar: many slots, so longer word n-grams rarely repeat."""
    form = rng.randrange(4)
    if form == 0:
        text = f"{_noun_phrase(rng, nouns)} was {rng.choice(VERBS)} {rng.choice(PLACES)}"
    elif form == 1:
        text = f"{rng.choice(TIMES)}, {rng.choice(PEOPLE)} {rng.choice(VERBS)} {_noun_phrase(rng, nouns)}"
    elif form == 2:
        text = (f"{rng.choice(PEOPLE)} {rng.choice(SAYS)} that {_noun_phrase(rng, nouns)} "
                f"had been {rng.choice(VERBS)} {rng.choice(PLACES)}")
    else:
        text = (f"{rng.choice(PEOPLE)} {rng.choice(VERBS)} {_noun_phrase(rng, nouns)} "
                f"{rng.choice(LINKS)} {rng.choice(PEOPLE)} {rng.choice(VERBS)} {_noun_phrase(rng, nouns)}")
    return text[0].upper() + text[1:] + "."


def article_paragraphs(rng: random.Random, nouns: list[str], n_paragraphs: int) -> list[str]:
    return [" ".join(sentence(rng, nouns) for _ in range(rng.randint(3, 6))) for _ in range(n_paragraphs)]


def page_html(title: str, body_blocks: list[str], *, lang: str = "en", site: str = "example") -> str:
    """A page with the usual chrome around the main content: nav, sidebar, footer, cookie bar."""
    nav = "".join(f'<li><a href="/{item.lower().replace(" ", "-")}">{item}</a></li>' for item in NAV)
    body = "\n".join(f"<p>{html.escape(block)}</p>" for block in body_blocks)
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)} | {site}</title>
<script>window.dataLayer = window.dataLayer || []; function track(){{}}</script>
<style>.nav{{display:flex}} .cookie{{position:fixed}}</style></head>
<body>
<header><div class="logo">{site}</div><nav class="nav"><ul>{nav}</ul></nav></header>
<main><article><h1>{html.escape(title)}</h1>
<p class="byline">Posted in {site} news</p>
{body}
</article></main>
<aside class="sidebar"><h3>Popular</h3><ul><li><a href="/a">Ten tips for spring</a></li>
<li><a href="/b">Our favourite walks</a></li><li><a href="/c">Subscribe to the newsletter</a></li></ul></aside>
<footer><p>Copyright 2026 {site}. All rights reserved.</p><a href="/privacy">Privacy policy</a> <a href="/terms">Terms</a></footer>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies</div>
</body></html>"""


def listing_html(rng: random.Random, site: str) -> str:
    links = "".join(f'<li><a href="/item/{rng.randint(1, 9999)}">{rng.choice(NAV)} {rng.randint(1, 99)}</a></li>'
                    for _ in range(60))
    return f"<html><head><title>{site} index</title></head><body><nav><ul>{links}</ul></nav>" \
           f"<footer>Copyright {site}</footer></body></html>"


def spam_html(rng: random.Random) -> str:
    lines = [" ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(4, 9))) for _ in range(40)]
    return page_html("Cheap best price online now", lines, site="deals-4-u")


def repeated_html(rng: random.Random, nouns: list[str]) -> str:
    paragraph = " ".join(sentence(rng, nouns) for _ in range(3))
    return page_html("Read this now", [paragraph] * 25, site="mirror-farm")


def near_duplicate(rng: random.Random, paragraphs: list[str]) -> list[str]:
    """A copy with a few words replaced and the end cut off, as scrapers and mirrors do."""
    edited = []
    for paragraph in paragraphs:
        words = paragraph.split()
        for _ in range(max(1, len(words) // 40)):
            index = rng.randrange(len(words))
            if not words[index].endswith("."):
                words[index] = rng.choice(["indeed", "really", "also", "often", "quite"])
        edited.append(" ".join(words))
    budget = int(sum(len(p) for p in edited) * rng.uniform(0.85, 0.95))
    kept: list[str] = []
    for paragraph in edited:
        if len(paragraph) <= budget:
            kept.append(paragraph)
            budget -= len(paragraph)
            continue
        cut = paragraph.rfind(". ", 0, budget)  # end the copy at a sentence boundary
        if cut > 0:
            kept.append(paragraph[: cut + 1])
        break
    return kept


def binary_pages(rng: random.Random, site: str) -> list[tuple[str, bytes, str, int]]:
    return [
        (f"https://{site}/files/report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf", 200),
        (f"https://{site}/api/items.json", b'{"items": [1, 2, 3]}', "application/json", 200),
        (f"https://{site}/img/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64)), "image/png", 200),
        (f"https://{site}/missing-page", b"<html><body><h1>Not found</h1></body></html>", "text/html", 404),
        (f"https://{site}/old-url", b"", "text/html", 301),
    ]


def demo_pages(rng: random.Random, file_index: int, articles_per_file: int) -> list[tuple[str, bytes, str, int]]:
    """(url, body, content type, status) for one demo WARC file."""
    pages: list[tuple[str, bytes, str, int]] = []
    topic_names = sorted(TOPICS)
    originals: list[tuple[str, list[str]]] = []
    for n in range(articles_per_file):
        name = topic_names[(n + file_index) % len(topic_names)]
        paragraphs = article_paragraphs(rng, TOPICS[name], rng.randint(4, 9))
        title = f"Notes on {name}, part {file_index * articles_per_file + n + 1}"
        originals.append((title, paragraphs))
        url = f"https://{name}-journal.example/{file_index}/{n}/article.html"
        pages.append((url, page_html(title, paragraphs, site=f"{name}-journal").encode(), "text/html", 200))
    for n, (title, paragraphs) in enumerate(originals[: max(2, articles_per_file // 8)]):
        pages.append((f"https://mirror-{n}.example/{file_index}/copy.html",
                      page_html(title, paragraphs, site="mirror").encode(), "text/html", 200))
        pages.append((f"https://scraper-{n}.example/{file_index}/post.html",
                      page_html(title, near_duplicate(rng, paragraphs), site="scraper").encode(), "text/html", 200))
    for lang, sentences in OTHER_LANGUAGES.items():
        for n in range(1):
            picked = rng.sample(sentences, len(sentences))
            blocks = [" ".join(picked[: len(picked) // 2]), " ".join(picked[len(picked) // 2 :])]
            pages.append((f"https://{lang}.example/{file_index}/{n}.html",
                          page_html(sentences[0][:40], blocks, lang=lang, site=f"site-{lang}").encode("utf-8"),
                          "text/html; charset=utf-8", 200))
    site = f"portal-{file_index}.example"
    for n in range(4):
        pages.append((f"https://{site}/list/{n}", listing_html(rng, site).encode(), "text/html", 200))
        pages.append((f"https://spam-{file_index}-{n}.example/", spam_html(rng).encode(), "text/html", 200))
        pages.append((f"https://farm-{file_index}-{n}.example/",
                      repeated_html(rng, TOPICS[rng.choice(topic_names)]).encode(), "text/html", 200))
    pages += binary_pages(rng, site)
    rng.shuffle(pages)
    return pages


def write_demo_data(folder: Path, *, n_files: int = 3, articles_per_file: int = 40, seed: int = 0) -> list[Path]:
    """Write ``n_files`` demo WARC files into ``folder``; same arguments, same bytes."""
    paths = []
    for index in range(n_files):
        rng = random.Random(f"{seed}-{index}")
        name = f"demo-{index:05d}.warc.gz"
        when = START + timedelta(days=index)
        records = [warcinfo_record(name, DEMO_CRAWL, when)]
        for n, (url, body, content_type, status) in enumerate(demo_pages(rng, index, articles_per_file)):
            fetched = when + timedelta(seconds=n)
            records.append(request_record(url, fetched))
            records.append(response_record(url, body, content_type, fetched, status))
            records.append(metadata_record(url, fetched, f"fetchTimeMs: {rng.randint(50, 900)}\r\n"))
        path = folder / name
        if not (path.is_file() and path.read_bytes() == b"".join(records)):
            write_warc(path, records)  # unchanged files keep their mtime, so caches stay valid
        paths.append(path)
    return paths
