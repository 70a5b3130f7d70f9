"""Deterministic synthetic e-commerce data in the Segment HTTP Tracking API format.

The generator models a small web shop ("https://shop.example.com") with a built-in catalog of 50 products in
five categories (Shoes, Electronics, Books, Home, Beauty). Every synthetic customer ``i`` gets a profile (names
from small international lists, ``firstname.lastname{i}@example.{com,org,net}`` email, an E.164 phone valid for
the ``phonenumbers`` library for ~60%, gender, birthday, address in PL/US/GB/DE/TR/BR, language, plan, and a
``loyalty_card`` id for ~30%) and a journey:

* anonymous web sessions on one or two devices, each with its own ``anonymousId``: ``page`` calls (Home,
  Category, Product, Cart, Checkout) and ``track`` calls ("Product Viewed", "Product Added", "Cart Viewed",
  "Checkout Started"); some sessions stop after adding to the cart (abandoned carts);
* ~70% become known: a login ``identify`` (``userId`` + the device's ``anonymousId`` + full traits), after
  which that device's events carry both ids; ~20% of known customers also log in on a second device
  (cross-device), ~5% send an ``alias`` (``previousId`` = an ``anonymousId``);
* known customers place web orders ("Order Completed" with ``products``); loyalty-card holders also buy in
  store ("Order Completed" with ``properties.channel == "pos"`` and ``context.externalIds`` naming the card);
* email reactions for known customers ("Email Delivered", "Email Opened", "Email Link Clicked", rarely
  "Unsubscribed") with ``userId`` and ``context.traits.email``;
* ~20% of known customers get later trait-update ``identify`` calls (address change, plan upgrade, new phone),
  always after every login identify, so the last write is the one that should win.

Messages are dicts exactly as an SDK sends them in a ``/v1/batch`` ``batch`` array. Each customer's messages are
yielded in chronological order, customer after customer; ``messageId`` is ``f"demo-{seed}-{n}"`` with ``n`` the
position in the output. All timestamps lie within the 180 days before ``now`` (UTC, millisecond ISO-8601 with
``Z``). IPs come from the documentation ranges 192.0.2.0/24 and 198.51.100.0/24 only. Output depends only on
``profiles``, ``seed`` and ``now``: customer ``i`` is drawn from its own RNG seeded with ``(seed, i)``.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

__all__ = ["WINDOW_DAYS", "generate_batches", "generate_messages"]

WINDOW_DAYS: Final = 180
_DAY: Final = 86_400.0
_HOUR: Final = 3_600.0
_FIRST_SEEN_MAX_DAYS: Final = 175.0
_SITE: Final = "https://shop.example.com"
_SHOP_TITLE: Final = "Portrait Shop"
_LIBRARY_NAME: Final = "portrait-demo"
_LIBRARY_VERSION: Final = "1"
_RATES: Final = {"USD": 1.0, "EUR": 0.92, "PLN": 3.95}


_T = TypeVar("_T")


class _Weighted(Generic[_T]):
    """A weighted choice with precomputed cumulative weights (same draws as rng.choices(items, weights)[0])."""

    __slots__ = ("_cum", "_items", "_total")

    def __init__(self, items: tuple[_T, ...], weights: tuple[int, ...]) -> None:
        self._items = items
        self._cum = tuple(itertools.accumulate(weights))
        self._total = float(self._cum[-1])

    def pick(self, rng: random.Random) -> _T:
        return self._items[bisect.bisect(self._cum, rng.random() * self._total, 0, len(self._cum) - 1)]


# --------------------------------------------------------------------------------------------------------------------
# Built-in reference data
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Product:
    product_id: str
    sku: str
    name: str
    category: str
    price_usd: float
    slug: str


def _slugify(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in _ascii(text).lower()).split())


_CATALOG_SPEC: Final[dict[str, tuple[tuple[str, float], ...]]] = {
    "Shoes": (
        ("Trail Runner 2", 119.0), ("City Sneaker", 79.0), ("Leather Chelsea Boot", 159.0), ("Canvas Slip-On", 45.0),
        ("Marathon Pro", 179.0), ("Hiking Boot GTX", 189.0), ("Summer Sandal", 39.0), ("Court Classic", 89.0),
        ("Wool Runner", 99.0), ("Kids Velcro Shoe", 35.0),
    ),
    "Electronics": (
        ("Wireless Earbuds", 129.0), ("Noise Cancelling Headphones", 299.0), ("Smartwatch S3", 249.0),
        ("USB-C Charger 65W", 39.0), ("Bluetooth Speaker", 79.0), ("E-Reader Paper", 139.0),
        ("Action Camera 4K", 229.0), ("Mechanical Keyboard", 109.0), ("Wireless Mouse", 29.0),
        ("Power Bank 20000", 49.0),
    ),
    "Books": (
        ("The Data Warehouse Toolkit", 45.0), ("Designing Data-Intensive Applications", 52.0),
        ("Cooking for Two", 24.0), ("A Short History of Nearly Everything", 18.0), ("The Pragmatic Programmer", 41.0),
        ("Mountain Trails Guide", 22.0), ("Children's Atlas", 19.0), ("Mindful Mornings", 16.0),
        ("Startup Playbook", 27.0), ("Poetry of the Seasons", 14.0),
    ),
    "Home": (
        ("Linen Duvet Cover", 89.0), ("Cast Iron Skillet", 49.0), ("Ceramic Mug Set", 32.0), ("Scented Candle", 19.0),
        ("Espresso Machine", 349.0), ("Wool Throw Blanket", 69.0), ("Bamboo Cutting Board", 25.0),
        ("Desk Lamp LED", 45.0), ("Glass Storage Jars", 29.0), ("Indoor Plant Pot", 22.0),
    ),
    "Beauty": (
        ("Vitamin C Serum", 34.0), ("Daily Moisturizer SPF30", 28.0), ("Argan Hair Oil", 24.0),
        ("Clay Face Mask", 19.0), ("Eau de Parfum Cedar", 89.0), ("Lip Balm Trio", 12.0),
        ("Electric Toothbrush", 69.0), ("Beard Grooming Kit", 39.0), ("Hand Cream Rose", 14.0),
        ("Mineral Sunscreen", 22.0),
    ),
}


def _build_catalog() -> tuple[_Product, ...]:
    products: list[_Product] = []
    for category, items in _CATALOG_SPEC.items():
        for name, price in items:
            n = len(products) + 1
            products.append(_Product(f"prod-{n:03d}", f"{category[:3].upper()}-{n:04d}", name, category, price,
                                     _slugify(name)))
    return tuple(products)


@dataclass(frozen=True, slots=True)
class _Country:
    code: str
    language: str
    currency: str
    cities: tuple[tuple[str, str], ...]  # (city, postal code template; '#' = random digit)
    streets: tuple[str, ...]
    number_first: bool  # "12 Main Street" (US/GB) vs "Hauptstraße 12"
    phones: tuple[str, ...]  # E.164 templates; '#' = digit 0-9, 'N' = digit 2-9


_COUNTRIES: Final = (
    _Country("PL", "pl-PL", "PLN", (("Warszawa", "00-###"), ("Kraków", "30-###"), ("Gdańsk", "80-###")),
             ("ul. Marszałkowska", "ul. Długa", "ul. Floriańska", "ul. Piękna"), False,
             ("+48512######", "+48601######", "+48791######", "+48885######")),
    _Country("US", "en-US", "USD", (("San Francisco", "941##"), ("New York", "100##"), ("Chicago", "606##")),
             ("Market Street", "Broadway", "Lake Shore Drive", "Main Street"), True,
             ("+1415N2#####", "+1212N3#####", "+1312N4#####")),
    _Country("GB", "en-GB", "USD", (("London", "SW1A #AA"), ("Manchester", "M# #AE"), ("Edinburgh", "EH# #NG")),
             ("High Street", "Baker Street", "Station Road", "Church Lane"), True,
             ("+447400######", "+447506######", "+447981######")),
    _Country("DE", "de-DE", "EUR", (("Berlin", "10###"), ("München", "80###"), ("Hamburg", "20###")),
             ("Hauptstraße", "Schillerstraße", "Gartenweg", "Bahnhofstraße"), False,
             ("+491512#######", "+491601#######", "+49171#######")),
    _Country("TR", "tr-TR", "USD", (("İstanbul", "34###"), ("Ankara", "06###"), ("İzmir", "35###")),
             ("İstiklal Caddesi", "Atatürk Bulvar\u0131", "Bağdat Caddesi", "Cumhuriyet Caddesi"), False,
             ("+90532#######", "+90541#######", "+90505#######")),
    _Country("BR", "pt-BR", "USD", (("São Paulo", "01###-###"), ("Rio de Janeiro", "20###-###"),
                                   ("Belo Horizonte", "30###-###")),
             ("Avenida Paulista", "Rua Augusta", "Rua das Flores", "Avenida Atlântica"), False,
             ("+55119########", "+55219########", "+55319########")),
)
_COUNTRY: Final = _Weighted(_COUNTRIES, (25, 25, 15, 15, 10, 10))
_GENDER: Final = _Weighted(("female", "male", "other"), (48, 48, 4))

_FEMALE_NAMES: Final = ("Anna", "Zofia", "Maja", "Emma", "Olivia", "Sophie", "Amelia", "Hannah", "Lena", "Mia",
                        "Elif", "Zeynep", "Ayşe", "Ana", "Beatriz", "Júlia", "Chloé", "Priya", "Yuki", "Fatima")
_MALE_NAMES: Final = ("Jan", "Piotr", "Łukasz", "Jakub", "Liam", "Noah", "James", "Oliver", "Lukas", "Felix",
                      "Jonas", "Mehmet", "Emre", "Can", "João", "Pedro", "Lucas", "Arjun", "Kenji", "Omar")
_LAST_NAMES: Final = ("Nowak", "Kowalski", "Wiśniewski", "Smith", "Johnson", "Williams", "Brown", "Taylor",
                      "Müller", "Schmidt", "Schneider", "Fischer", "Y\u0131lmaz", "Kaya", "Demir", "Silva", "Santos",
                      "Oliveira", "García", "Martin", "Rossi", "Kim", "Tanaka", "Patel", "O'Brien")
_ASCII_MAP: Final = str.maketrans({"ł": "l", "Ł": "L", "ß": "ss", "\u0131": "i", "ø": "o", "Ø": "O", "æ": "ae"})
_EMAIL_DOMAINS: Final = ("example.com", "example.org", "example.net")
_PLANS: Final = ("free", "plus", "premium")
_PLAN: Final = _Weighted(_PLANS, (55, 33, 12))
_TIER: Final = _Weighted(("bronze", "silver", "gold"), (60, 30, 10))
_QUANTITY: Final = _Weighted((1, 2, 3), (80, 15, 5))
_KNOWN_SESSION: Final = _Weighted(("browse", "cart", "order"), (40, 25, 35))
_ANONYMOUS_SESSION: Final = _Weighted(("browse", "cart"), (65, 35))

_USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
    "Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
    "Mobile/15E148 Safari/604.1",
)
_REFERRERS: Final = ("", "", "https://www.google.com/", "https://duckduckgo.com/", "https://www.facebook.com/",
                     "https://news.example.org/deals")

# (campaign_id, campaign_name, email_subject, days before now the campaign is sent)
_CAMPAIGNS: Final = (
    ("cmp-001", "Spring Sale", "Spring Sale: up to 40% off", 160.0),
    ("cmp-002", "New Arrivals April", "Fresh picks just landed", 142.0),
    ("cmp-003", "Loyalty Double Points", "Double points this weekend", 125.0),
    ("cmp-004", "Summer Shoes", "Step into summer", 107.0),
    ("cmp-005", "Tech Week", "Tech Week deals inside", 90.0),
    ("cmp-006", "Back to Books", "Your next great read", 72.0),
    ("cmp-007", "Home Refresh", "Make your home cosier", 55.0),
    ("cmp-008", "Beauty Favourites", "Our best-loved beauty picks", 38.0),
    ("cmp-009", "Members Only", "An exclusive offer for you", 21.0),
    ("cmp-010", "Weekend Flash Sale", "48 hours only", 4.0),
)
_STORES: Final = ("store-waw-01", "store-nyc-02", "store-lon-03", "store-ber-04", "store-ist-05", "store-sao-06")


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text.translate(_ASCII_MAP))
    return "".join(c for c in folded if c.isascii() and not unicodedata.combining(c))


_CATALOG: Final = _build_catalog()
_EMAIL_PART: Final = {name: _slugify(name).replace("-", "") for name in _FEMALE_NAMES + _MALE_NAMES + _LAST_NAMES}
_CATEGORIES: Final = tuple(_CATALOG_SPEC)
_BY_CATEGORY: Final = {c: [p for p in _CATALOG if p.category == c] for c in _CATEGORIES}


# --------------------------------------------------------------------------------------------------------------------
# Customers
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Device:
    anonymous_id: str
    user_agent: str
    ip: str


@dataclass(slots=True)
class _Person:
    index: int
    first_name: str
    last_name: str
    email: str
    gender: str
    birthday: str
    country: _Country
    address: dict[str, str]
    plan: str
    phone: str | None
    loyalty_card: str | None
    loyalty_tier: str | None
    devices: tuple[_Device, ...]

    @property
    def user_id(self) -> str:
        return f"user-{self.index}"


def _fill(rng: random.Random, template: str) -> str:
    out = []
    for c in template:
        if c == "#":
            out.append(str(rng.randrange(10)))
        elif c == "N":
            out.append(str(rng.randrange(2, 10)))
        else:
            out.append(c)
    return "".join(out)


def _address(rng: random.Random, country: _Country) -> dict[str, str]:
    city, postal = rng.choice(country.cities)
    street, number = rng.choice(country.streets), str(rng.randint(1, 180))
    line = f"{number} {street}" if country.number_first else f"{street} {number}"
    return {"street": line, "city": city, "postalCode": _fill(rng, postal), "country": country.code}


def _uuid4(rng: random.Random) -> str:
    """A version-4 UUID string drawn from `rng` (equal to str(uuid.UUID(int=bits, version=4)), but faster)."""
    n = rng.getrandbits(128) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _device(rng: random.Random) -> _Device:
    net = rng.choice(("192.0.2", "198.51.100"))
    return _Device(_uuid4(rng), rng.choice(_USER_AGENTS), f"{net}.{rng.randint(1, 254)}")


def _person(rng: random.Random, index: int, now: datetime) -> _Person:
    gender = _GENDER.pick(rng)
    names = _FEMALE_NAMES if gender == "female" else _MALE_NAMES if gender == "male" else _FEMALE_NAMES + _MALE_NAMES
    first, last = rng.choice(names), rng.choice(_LAST_NAMES)
    local = f"{_EMAIL_PART[first]}.{_EMAIL_PART[last]}{index}"
    country = _COUNTRY.pick(rng)
    birthday = f"{now.year - rng.randint(18, 75)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    has_card = rng.random() < 0.3
    devices = tuple(_device(rng) for _ in range(2))
    return _Person(
        index=index, first_name=first, last_name=last, email=f"{local}@{rng.choice(_EMAIL_DOMAINS)}",
        gender=gender, birthday=birthday, country=country, address=_address(rng, country),
        plan=_PLAN.pick(rng),
        phone=_fill(rng, rng.choice(country.phones)) if rng.random() < 0.6 else None,
        loyalty_card=f"LC-{index:08d}" if has_card else None,
        loyalty_tier=_TIER.pick(rng) if has_card else None,
        devices=devices,
    )


def _traits(p: _Person, created_at: str) -> dict[str, Any]:
    traits: dict[str, Any] = {
        "firstName": p.first_name, "lastName": p.last_name, "email": p.email, "gender": p.gender,
        "birthday": p.birthday, "address": dict(p.address), "language": p.country.language,
        "createdAt": created_at, "plan": p.plan,
    }
    if p.phone is not None:
        traits["phone"] = p.phone
    if p.loyalty_card is not None:
        traits["loyalty_card"] = p.loyalty_card
        traits["loyalty_tier"] = p.loyalty_tier
    return traits


# --------------------------------------------------------------------------------------------------------------------
# Journey: collects one customer's messages with their times (seconds relative to `now`, always negative)
# --------------------------------------------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    """Format epoch seconds as "2026-05-01T10:00:00.123Z" (truncated to milliseconds)."""
    seconds, millis = divmod(int(epoch * 1000), 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{millis:03d}Z"


def _library() -> dict[str, str]:
    return {"name": _LIBRARY_NAME, "version": _LIBRARY_VERSION}


def _base(kind: str, user_id: str | None, anonymous_id: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": kind, "messageId": "", "timestamp": ""}
    if user_id is not None:
        msg["userId"] = user_id
    if anonymous_id is not None:
        msg["anonymousId"] = anonymous_id
    return msg


@dataclass(slots=True)
class _Journey:
    rng: random.Random
    person: _Person
    now_epoch: float
    order_prefix: str
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    orders: int = 0
    created_at: str = ""

    def add(self, t: float, msg: dict[str, Any]) -> None:
        self.events.append((t, msg))

    def next_order_id(self) -> str:
        self.orders += 1
        return f"{self.order_prefix}-{self.orders}"

    def price(self, product: _Product) -> float:
        return round(product.price_usd * _RATES[self.person.country.currency], 2)

    def product_props(self, product: _Product, quantity: int = 1) -> dict[str, Any]:
        return {
            "product_id": product.product_id, "sku": product.sku, "name": product.name,
            "category": product.category, "price": self.price(product), "quantity": quantity,
            "currency": self.person.country.currency, "url": f"{_SITE}/p/{product.product_id}-{product.slug}",
        }

    def order_props(self, items: list[tuple[_Product, int]], channel: str) -> dict[str, Any]:
        currency = self.person.country.currency
        products = [{"product_id": p.product_id, "sku": p.sku, "name": p.name, "category": p.category,
                     "price": self.price(p), "quantity": q} for p, q in items]
        revenue = round(sum(self.price(p) * q for p, q in items), 2)
        shipping = 0.0 if channel == "pos" or revenue >= 100 else round(9.99 * _RATES[currency], 2)
        return {"order_id": self.next_order_id(), "channel": channel, "revenue": revenue, "shipping": shipping,
                "total": round(revenue + shipping, 2), "currency": currency, "products": products}


# --------------------------------------------------------------------------------------------------------------------
# Web sessions
# --------------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    journey: _Journey
    device: _Device
    t: float
    user_id: str | None
    cart_id: str
    page: dict[str, str] = field(default_factory=dict)
    login_at: float = 0.0

    def tick(self, low: float = 4.0, high: float = 150.0) -> float:
        self.t += self.journey.rng.uniform(low, high)
        return self.t

    def context(self) -> dict[str, Any]:
        return {"library": _library(), "page": dict(self.page), "userAgent": self.device.user_agent,
                "ip": self.device.ip, "locale": self.journey.person.country.language}

    def visit(self, name: str, path: str, title: str, extra: dict[str, Any] | None = None) -> None:
        referrer = self.page.get("url") or self.journey.rng.choice(_REFERRERS)
        url = f"{_SITE}{path}"
        self.page = {"path": path, "url": url, "title": title, "referrer": referrer, "search": ""}
        msg = _base("page", self.user_id, self.device.anonymous_id)
        msg["name"] = name
        msg["properties"] = {"path": path, "url": url, "title": title, "referrer": referrer, **(extra or {})}
        msg["context"] = self.context()
        self.journey.add(self.tick(), msg)

    def track(self, event: str, properties: dict[str, Any]) -> None:
        msg = _base("track", self.user_id, self.device.anonymous_id)
        msg["event"] = event
        msg["properties"] = properties
        msg["context"] = self.context()
        self.journey.add(self.tick(1.0, 20.0), msg)

    def login(self) -> None:
        """Identify: the device's anonymous visitor signs up or logs in; the first login creates the account."""
        j = self.journey
        self.user_id = j.person.user_id
        self.login_at = self.tick(10.0, 60.0)
        j.created_at = j.created_at or _iso(j.now_epoch + self.login_at)
        msg = _base("identify", self.user_id, self.device.anonymous_id)
        msg["traits"] = _traits(j.person, j.created_at)
        msg["context"] = self.context()
        j.add(self.login_at, msg)

    def view_product(self, product: _Product) -> None:
        self.visit("Product", f"/p/{product.product_id}-{product.slug}", f"{product.name} | {_SHOP_TITLE}",
                   {"category": product.category, "product_id": product.product_id})
        self.track("Product Viewed", self.journey.product_props(product))


def _browse(s: _Session) -> list[_Product]:
    rng = s.journey.rng
    category = rng.choice(_CATEGORIES)
    if rng.random() < 0.6:
        s.visit("Home", "/", _SHOP_TITLE)
    s.visit("Category", f"/c/{category.lower()}", f"{category} | {_SHOP_TITLE}", {"category": category})
    in_category = _BY_CATEGORY[category]
    viewed = rng.sample(in_category, min(len(in_category), 1 + int(rng.expovariate(0.8))))
    for product in viewed:
        s.view_product(product)
    return viewed


def _add_to_cart(s: _Session, viewed: list[_Product]) -> list[tuple[_Product, int]]:
    rng = s.journey.rng
    chosen = rng.sample(viewed, rng.randint(1, len(viewed)))
    items = [(p, _QUANTITY.pick(rng)) for p in chosen]
    for product, quantity in items:
        s.track("Product Added", s.journey.product_props(product, quantity) | {"cart_id": s.cart_id})
    return items


def _cart_props(s: _Session, items: list[tuple[_Product, int]]) -> dict[str, Any]:
    j = s.journey
    products = [j.product_props(p, q) for p, q in items]
    value = round(sum(item["price"] * item["quantity"] for item in products), 2)
    return {"products": products, "value": value, "currency": j.person.country.currency}


def _web_session(s: _Session, kind: str, login: bool) -> None:
    """Run one session: browse; for kind "cart"/"order" add to cart; "order" also completes a purchase."""
    viewed = _browse(s)
    if login:
        s.login()
    if kind == "browse":
        return
    items = _add_to_cart(s, viewed)
    s.visit("Cart", "/cart", f"Cart | {_SHOP_TITLE}")
    s.track("Cart Viewed", _cart_props(s, items))
    if kind == "cart" and s.journey.rng.random() < 0.6:
        return  # abandoned before checkout
    s.visit("Checkout", "/checkout", f"Checkout | {_SHOP_TITLE}")
    s.track("Checkout Started", _cart_props(s, items))
    if kind == "order" and s.user_id is not None:
        s.track("Order Completed", s.journey.order_props(items, "web"))


# --------------------------------------------------------------------------------------------------------------------
# Journey plan
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    starts: tuple[float, ...]
    devices: tuple[int, ...]  # device index per session
    login_session: int | None  # session index of the first login (None: stays anonymous)
    second_login_session: int | None  # session index of the cross-device login


def _session_starts(rng: random.Random, first_seen: float) -> list[float]:
    count = 1 + min(int(rng.expovariate(1 / 1.25)), 14)
    return [first_seen, *sorted(rng.uniform(first_seen, -_HOUR) for _ in range(count - 1))]


def _spread(starts: list[float]) -> tuple[float, ...]:
    """Move sessions earlier so consecutive starts are >= 1 hour apart (a session lasts < 1 hour: no overlaps)."""
    spread = list(starts)
    for i in range(len(spread) - 2, -1, -1):
        spread[i] = min(spread[i], spread[i + 1] - _HOUR)
    return tuple(spread)


def _plan(rng: random.Random, first_seen: float) -> _Plan:
    starts = _session_starts(rng, first_seen)
    known = rng.random() < 0.7
    cross = known and rng.random() < 0.2
    two_devices = cross or rng.random() < 0.2
    devices = [0] + [1 if two_devices and rng.random() < 0.4 else 0 for _ in starts[1:]]
    login = (0 if rng.random() < 0.5 else rng.randrange(len(starts))) if known else None
    second = None
    if login is not None and cross:
        later = [i for i in range(login + 1, len(starts)) if devices[i] != devices[login]]
        if not later:  # add a last session on the other device
            starts.append(rng.uniform(starts[-1], -_HOUR))
            devices.append(1 - devices[login])
            later = [len(starts) - 1]
        second = later[0]
    return _Plan(_spread(starts), tuple(devices), login, second)


def _session_kind(rng: random.Random, known: bool) -> str:
    if known:
        return _KNOWN_SESSION.pick(rng)
    return _ANONYMOUS_SESSION.pick(rng)


def _run_web(j: _Journey, plan: _Plan) -> list[float]:
    """Emit all web sessions; return the times of the login identify calls (empty if the customer stays anonymous)."""
    known_devices: set[int] = set()
    logins: list[float] = []
    for index, (start, device_index) in enumerate(zip(plan.starts, plan.devices, strict=True)):
        logs_in = index in (plan.login_session, plan.second_login_session)
        user_id = j.person.user_id if device_index in known_devices else None
        session = _Session(j, j.person.devices[device_index], start, user_id, f"cart-{j.rng.getrandbits(48):012x}")
        _web_session(session, _session_kind(j.rng, user_id is not None or logs_in), logs_in)
        if logs_in:
            known_devices.add(device_index)
            logins.append(session.login_at)
    return sorted(logins)


def _alias(j: _Journey, plan: _Plan, login: float) -> None:
    if plan.login_session is None or j.rng.random() >= 0.05:
        return
    msg = _base("alias", j.person.user_id, None)
    msg["previousId"] = j.person.devices[plan.devices[plan.login_session]].anonymous_id
    msg["context"] = {"library": _library()}
    j.add(login + j.rng.uniform(1.0, 30.0), msg)


def _server_context(person: _Person) -> dict[str, Any]:
    return {"library": _library(), "traits": {"email": person.email}}


def _email_event(j: _Journey, t: float, event: str, campaign: tuple[str, str, str, float]) -> None:
    msg = _base("track", j.person.user_id, None)
    msg["event"] = event
    msg["properties"] = {"campaign_id": campaign[0], "campaign_name": campaign[1], "email_subject": campaign[2]}
    msg["context"] = _server_context(j.person)
    j.add(t, msg)


def _emails(j: _Journey, since: float) -> None:
    rng = j.rng
    for campaign in _CAMPAIGNS:  # oldest first; nothing is delivered after an unsubscribe
        sent = -campaign[3] * _DAY + rng.uniform(0.0, 1_800.0)
        if sent <= since or rng.random() >= 0.75:
            continue
        _email_event(j, sent, "Email Delivered", campaign)
        if rng.random() >= 0.45:
            continue
        opened = sent + rng.expovariate(1 / (6 * _HOUR))
        if opened >= -1.0:
            continue
        _email_event(j, opened, "Email Opened", campaign)
        if rng.random() < 0.4 and opened + 600.0 < 0:
            _email_event(j, opened + rng.uniform(5.0, 600.0), "Email Link Clicked", campaign)
        if rng.random() < 0.02 and opened + 900.0 < 0:
            _email_event(j, opened + 900.0, "Unsubscribed", campaign)
            return


def _pos_orders(j: _Journey, first_seen: float, login: float | None) -> None:
    person, rng = j.person, j.rng
    if person.loyalty_card is None:
        return
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        t = rng.uniform(first_seen, -_HOUR)
        known = login is not None and t > login and rng.random() < 0.6
        anonymous_id = None if known else _uuid4(rng)
        msg = _base("track", person.user_id if known else None, anonymous_id)
        msg["event"] = "Order Completed"
        items = [(p, rng.choice((1, 1, 2))) for p in rng.sample(_CATALOG, rng.randint(1, 3))]
        msg["properties"] = j.order_props(items, "pos") | {"store_id": rng.choice(_STORES)}
        msg["context"] = {"library": _library(), "externalIds": [
            {"id": person.loyalty_card, "type": "loyalty_card", "collection": "users", "encoding": "none"}]}
        j.add(t, msg)


def _trait_update(j: _Journey) -> dict[str, Any]:
    person, rng = j.person, j.rng
    change = rng.choice(("address", "plan", "phone"))
    if change == "phone" and person.phone is None:
        person.phone = _fill(rng, rng.choice(person.country.phones))
        return {"email": person.email, "phone": person.phone}
    if change == "plan" and person.plan != _PLANS[-1]:
        person.plan = _PLANS[_PLANS.index(person.plan) + 1]
        return {"email": person.email, "plan": person.plan}
    person.address = _address(rng, person.country)
    return {"email": person.email, "address": dict(person.address)}


def _trait_updates(j: _Journey, after: float) -> None:
    rng = j.rng
    if rng.random() >= 0.2 or after >= -2 * _HOUR:
        return
    times = sorted(rng.uniform(after + 60.0, -_HOUR) for _ in range(rng.choice((1, 1, 2, 3))))
    for t in times:  # chronological, so the person's state matches the last write
        msg = _base("identify", j.person.user_id, None)
        msg["traits"] = _trait_update(j)
        msg["context"] = {"library": _library()}
        j.add(t, msg)


def _customer(index: int, seed: int, now: datetime) -> list[tuple[float, dict[str, Any]]]:
    rng = random.Random(f"portrait-demo:{seed}:{index}")
    journey = _Journey(rng, _person(rng, index, now), now.timestamp(), f"order-{seed}-{index}")
    first_seen = -rng.uniform(2.0, _FIRST_SEEN_MAX_DAYS) * _DAY
    plan = _plan(rng, first_seen)
    logins = _run_web(journey, plan)
    if logins:
        _alias(journey, plan, logins[0])
        _emails(journey, logins[0])
    _pos_orders(journey, first_seen, logins[0] if logins else None)
    if logins:
        _trait_updates(journey, logins[-1])
    journey.events.sort(key=lambda item: item[0])
    return journey.events


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def _resolve_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def generate_messages(profiles: int, seed: int = 0, now: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Yield Segment-format messages for `profiles` synthetic customers, in roughly chronological order per customer.

    `now` defaults to the current UTC time; a naive `now` is taken as UTC. Every timestamp lies within the
    180 days before `now`. The same (profiles, seed, now) always yields the same messages.
    """
    if profiles < 0:
        raise ValueError("profiles must be >= 0")
    when = _resolve_now(now)
    now_epoch = when.timestamp()
    n = 0
    for index in range(profiles):
        for t, msg in _customer(index, seed, when):
            msg["messageId"] = f"demo-{seed}-{n}"
            msg["timestamp"] = _iso(now_epoch + t)
            n += 1
            yield msg


def generate_batches(
    profiles: int, batch_size: int = 100, seed: int = 0, now: datetime | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The same messages grouped in lists of at most batch_size (as SDKs send /v1/batch)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batch: list[dict[str, Any]] = []
    for msg in generate_messages(profiles, seed=seed, now=now):
        batch.append(msg)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
