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
    "gardening": {
        "subjects": ["The old apple tree", "A raised vegetable bed", "Our neighbour's greenhouse", "The compost heap",
                     "A row of late tomatoes", "The herb border", "Every gardener in the valley", "The allotment society"],
        "verbs": ["needs", "rewards", "depends on", "suffers without", "benefits from", "slowly recovers after"],
        "objects": ["a thick layer of mulch", "careful pruning in late winter", "rain collected from the roof",
                    "a few hours of morning sun", "patience more than fertiliser", "a frost-free week in spring",
                    "the worms that turn the soil", "seeds saved from last year"],
        "tails": ["and the results show by midsummer", "which most beginners forget", "as our grandparents knew",
                  "even in a wet and cold year", "although the books rarely mention it", "if the soil is not too heavy"],
    },
    "astronomy": {
        "subjects": ["The small refracting telescope", "Our local astronomy club", "A clear winter night",
                     "The faint comet", "Jupiter's largest moon", "The observatory on the hill", "An amateur observer",
                     "The Andromeda galaxy"],
        "verbs": ["reveals", "was tracked by", "depends on", "is hidden by", "can be seen through", "changed"],
        "objects": ["a steady atmosphere and dark skies", "light pollution from the city", "a patient hour of waiting",
                    "careful notes in a paper logbook", "the glow of the rising moon", "binoculars on a tripod",
                    "a chart printed the evening before", "the long exposure of an old camera"],
        "tails": ["long before the first satellites were launched", "on almost every clear evening in March",
                  "which surprised the members who stayed late", "as the volunteers explained to the visitors",
                  "although the forecast had promised clouds", "and the sketches still hang in the library"],
    },
    "cooking": {
        "subjects": ["A good loaf of bread", "The family recipe for soup", "Fresh pasta", "The village bakery",
                     "Slow-cooked beans", "A simple tomato sauce", "The cook at the corner cafe", "Home-made yoghurt"],
        "verbs": ["needs", "is improved by", "was changed by", "depends on", "tastes better with", "begins with"],
        "objects": ["flour that has been stored properly", "a long and cool rise overnight", "salt added at the right time",
                    "a heavy pot with a tight lid", "onions cooked until they are soft", "a little patience at the stove",
                    "water that is not too hot", "herbs picked the same morning"],
        "tails": ["as anyone who has tried it will confirm", "and the kitchen smells wonderful for hours",
                  "which is why the old recipes still work", "even when the ingredients are very plain",
                  "although many modern books skip this step", "so the children always ask for a second bowl"],
    },
    "rivers": {
        "subjects": ["The river below the mill", "A narrow stream in the forest", "The flood of last autumn",
                     "The fishermen on the bank", "The stone bridge", "The council's water survey",
                     "Migrating salmon", "The wetland at the estuary"],
        "verbs": ["shaped", "was measured by", "depends on", "carried", "slowly filled", "was studied along"],
        "objects": ["the gravel beds where the fish spawn", "years of careful records", "the meadows on both sides",
                    "the rain that fell in the hills", "old maps kept in the town hall", "the roots of the willow trees",
                    "sediment from the farms upstream", "the reeds that shelter the birds"],
        "tails": ["and the changes are visible from the footpath", "as the survey published in spring explains",
                  "which the older residents remember well", "although nobody expected it to happen so quickly",
                  "even during the driest summer on record", "so the walking trail had to be moved"],
    },
    "cycling": {
        "subjects": ["The new cycle path", "A second-hand touring bicycle", "The club's Sunday ride",
                     "Commuters in the city", "The mountain pass", "A puncture on a cold morning",
                     "The repair workshop", "Riders in the charity event"],
        "verbs": ["depends on", "was improved by", "needs", "was slowed by", "connects", "benefits from"],
        "objects": ["well-inflated tyres and a clean chain", "a strong headwind along the coast",
                    "the villages along the old railway line", "careful planning of the route",
                    "a flask of tea and a spare tube", "the volunteers who repair old frames",
                    "lights that are bright enough in winter", "a gentle climb through the pine woods"],
        "tails": ["and the view from the top is worth every effort", "as the organisers pointed out before the start",
                  "which is why more people now ride to work", "even on the shortest days of the year",
                  "although the weather forecast was not encouraging", "so nobody minded the extra kilometres"],
    },
    "libraries": {
        "subjects": ["The public library", "A small reading room", "The local history collection",
                     "The volunteers at the archive", "A donated box of letters", "The children's story hour",
                     "The mobile library van", "Old parish registers"],
        "verbs": ["depends on", "was saved by", "attracts", "preserves", "was catalogued by", "welcomes"],
        "objects": ["donations from families in the town", "students preparing for their exams",
                    "photographs of the harbour a century ago", "a grant from the regional council",
                    "readers who come every Saturday", "a careful digitisation project",
                    "the memories of the oldest residents", "maps that show the original streets"],
        "tails": ["and the catalogue is now available to everyone", "as the librarian explained in her annual report",
                  "which makes the building busy even in summer", "although the opening hours were reduced last year",
                  "even when the weather keeps most people at home", "so the collection keeps growing every month"],
    },
}

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


def sentence(rng: random.Random, topic: dict) -> str:
    text = f"{rng.choice(topic['subjects'])} {rng.choice(topic['verbs'])} {rng.choice(topic['objects'])}"
    if rng.random() < 0.7:
        text += f", {rng.choice(topic['tails'])}"
    return text + "."


def article_paragraphs(rng: random.Random, topic: dict, n_paragraphs: int) -> list[str]:
    return [" ".join(sentence(rng, topic) for _ in range(rng.randint(3, 6))) for _ in range(n_paragraphs)]


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


def repeated_html(rng: random.Random, topic: dict) -> str:
    paragraph = " ".join(sentence(rng, topic) for _ in range(3))
    return page_html("Read this now", [paragraph] * 25, site="mirror-farm")


def near_duplicate(rng: random.Random, paragraphs: list[str]) -> list[str]:
    """A copy with a few words replaced and the end cut off, as scrapers and mirrors do."""
    words = " ".join(paragraphs).split()
    for _ in range(max(1, len(words) // 40)):
        words[rng.randrange(len(words))] = rng.choice(["indeed", "really", "also", "often", "quite"])
    keep = int(len(words) * rng.uniform(0.85, 0.95))
    text = " ".join(words[:keep])
    cut = len(text) // 3
    return [text[:cut], text[cut : 2 * cut], text[2 * cut :]]


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
        for n in range(3):
            blocks = [" ".join(rng.sample(sentences, 4)) for _ in range(4)]
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
