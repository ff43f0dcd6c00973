"""Language codes that `ingest.languages` accepts: ISO 639-1, read as the language identifier writes them."""

from __future__ import annotations

from pydantic_core import PydanticCustomError

# The 183 two-letter codes of ISO 639-1 (Library of Congress, the registration authority).
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz
ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii
ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi
mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw
sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk
ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())

# What py3langid 0.4.0 (tasks.langid) can output: 114 ISO 639-1 codes and 26 others, for languages
# that have no two-letter code (yue Cantonese, ary Moroccan Arabic, ...; zxx: no linguistic content).
# tests/faults/test_ingest_bounds.py checks this list against the model.
IDENTIFIED_CODES = frozenset("""
ace af am an ar ary arz as az ba bcl be bg bn br bs ca crh cs cy da de dz el en eo es et eu ext fa fi
fo fr fuv fy ga gcf gcr gd gl gom grc gu gug guw ha hbo he hi hr ht hu hy id ig is it ja jv ka kab kik
kk km kn ko ku ky la lb lg lij ln lo lt ltg lv mg mk ml mn mr ms mt my ne nl nn no nso oc om or pa pcm
pl ps pt qu ro ru rw sa sdh se si sk sl sn so sq sr st sv sw ta te tg th tk tl tr tt ug uk ur uz uzs
vec vi vo wa wuu xh yo yue zh zu zxx
""".split())


def language_codes(values: list) -> list:
    """Codes stripped and lowercased (EN -> en), repeats dropped; a code no document can carry is an error.

    Accepted: what the identifier outputs. Refused, naming the code: what is not ISO 639-1 and not one of
    the identifier's own codes ('english', 'xx', 'fra'), and ISO 639-1 codes it never outputs ('ab').
    """
    codes: list = []
    for value in values:
        code = value.strip().lower() if isinstance(value, str) else value
        if code == "" or code in codes:
            continue
        if isinstance(code, str) and code not in IDENTIFIED_CODES:
            raise _not_identified(code)
        codes.append(code)
    return codes


def _not_identified(code: str) -> PydanticCustomError:
    if code in ISO_639_1:
        return PydanticCustomError(
            "language_code", "{code} is an ISO 639-1 code that the language identifier (py3langid) never "
            "outputs, so no document would be kept", {"code": repr(code)})
    return PydanticCustomError(
        "language_code", "{code} is not an ISO 639-1 code (two letters, such as en, fr, zh)", {"code": repr(code)})
