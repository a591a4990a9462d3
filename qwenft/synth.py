"""Deterministic generator of JSON-extraction data: the training set AND the eval suites.

One generator makes both so the train/eval split is provable rather than
promised: schema types, passage phrasings and instruction phrasings are split
into TRAIN and HELD-OUT pools here, and `check_no_overlap` verifies the written
files. Everything comes from `random.Random` seeded with a purpose-tagged string
(e.g. "train:0"), so the training rows, the validation rows and the suites never
share a random stream even when their integer seeds coincide. No network, no
models.

Regenerate the shipped files with `python -m qwenft.synth`; `--check` exits 1
when the committed files differ from a fresh generation.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# ---------------------------------------------------------------------------
# Small embedded word lists (values only; nothing here is real personal data).
# ---------------------------------------------------------------------------

FIRST = ["Ana", "Ben", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tara",
         "Umar", "Vera", "Wei", "Yara", "Zoe"]
LAST = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Haddad", "Kowalski",
        "Brennan", "Ivanova", "Castillo", "Mensah", "Fischer", "Rossi", "Nguyen", "Park",
        "Dubois", "Costa", "Sato", "Larsen"]
CITY_COUNTRY = {
    "Lisbon": "Portugal", "Toronto": "Canada", "Nairobi": "Kenya", "Osaka": "Japan",
    "Denver": "USA", "Krakow": "Poland", "Lyon": "France", "Austin": "USA", "Porto": "Portugal",
    "Seoul": "South Korea", "Dublin": "Ireland", "Hamburg": "Germany", "Valencia": "Spain",
    "Melbourne": "Australia", "Oslo": "Norway", "Bogota": "Colombia", "Tunis": "Tunisia",
    "Auckland": "New Zealand",
}
CITIES = list(CITY_COUNTRY)
# Reserved example domains (RFC 2606 style) so generated addresses never reach anyone.
DOMAINS = ["example.com", "example.org", "mail.example", "inbox.test"]
LANGUAGES = ["English", "Spanish", "French", "German", "Japanese", "Portuguese", "Arabic",
             "Hindi", "Swahili", "Polish", "Korean", "Italian"]
PRODUCT_ADJ = ["Trail", "Nova", "Pixel", "Cedar", "Aero", "Echo", "Summit", "Lumen"]
PRODUCT_NOUN = ["Backpack", "Desk Lamp", "Water Bottle", "Headphones", "Kettle", "Yoga Mat",
                "Keyboard", "Tent"]
TAGS = ["outdoor", "office", "kitchen", "wireless", "eco", "travel", "gift", "sale"]
CURRENCIES = {"USD": "$", "EUR": "€", "GBP": "£"}
COMPANIES = ["Northwind", "Bluepeak Labs", "Orbital Foods", "Kestrel Bank", "Maple Robotics",
             "Tidewater Media", "Quarry Games", "Helix Health"]
JOB_TITLES = ["Data Analyst", "Backend Engineer", "Product Designer", "Nurse", "Accountant",
              "Support Specialist", "Marketing Manager", "DevOps Engineer"]
SKILLS = ["Python", "SQL", "Figma", "Excel", "Kubernetes", "SEO", "Go", "Tableau", "React",
          "customer service"]
BOOK_ADJ = ["Silent", "Last", "Hidden", "Paper", "Winter", "Glass", "Burning", "Quiet"]
BOOK_NOUN = ["Harbor", "Garden", "Orchard", "Engine", "Archive", "River", "Lantern", "Kingdom"]
GENRES = ["fantasy", "mystery", "romance", "science fiction", "history", "biography"]
AIRLINES = {"LH": "Lufthansa", "AF": "Air France", "UA": "United", "NH": "ANA", "TP": "TAP",
            "QF": "Qantas", "KL": "KLM", "AC": "Air Canada"}
CABINS = ["economy", "premium_economy", "business", "first"]
EVENT_TOPICS = ["Jazz", "Open Source", "Climate", "Robotics", "Street Food", "Poetry",
                "Indie Games", "Photography"]
EVENT_KINDS = ["concert", "conference", "workshop", "festival", "meetup"]
VENUES = ["Grand Hall", "Riverside Park", "Civic Center", "Pier 9", "Old Mill", "Harbor Arena"]
STREETS = ["King Street", "Elm Road", "Baker Lane", "Mill Avenue", "Harbor Way", "Rua Augusta",
           "Linden Allee", "Calle Mayor"]
DISHES = {  # dish -> (vegetarian, ingredient pool)
    "Lemon Risotto": (True, ["rice", "lemon", "parmesan", "butter", "onion", "stock"]),
    "Chickpea Curry": (True, ["chickpeas", "coconut milk", "onion", "garlic", "spinach", "cumin"]),
    "Beef Tacos": (False, ["beef", "tortillas", "onion", "lime", "cilantro", "chili"]),
    "Mushroom Soup": (True, ["mushrooms", "cream", "thyme", "garlic", "onion", "stock"]),
    "Pesto Pasta": (True, ["pasta", "basil", "pine nuts", "parmesan", "olive oil", "garlic"]),
    "Chicken Stir-Fry": (False, ["chicken", "soy sauce", "ginger", "peppers", "rice", "garlic"]),
    "Salmon Bowl": (False, ["salmon", "rice", "avocado", "cucumber", "sesame", "soy sauce"]),
}
DIFFICULTY = ["easy", "medium", "hard"]
CONDITIONS = ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy"]
HOTELS = ["Hotel Aurora", "Seaview Inn", "The Linden", "Casa Norte", "Parkside Lodge"]
ROOM_TYPES = ["single", "double", "suite"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

# ---------------------------------------------------------------------------
# Rendering helpers: values -> natural-language fragments.
# ---------------------------------------------------------------------------


def _iso(d: _dt.date) -> str:
    return d.isoformat()


def _sample_date(rng: random.Random) -> _dt.date:
    return _dt.date(2023, 1, 1) + _dt.timedelta(days=rng.randrange(1200))


def _say_date(iso: str, rng: random.Random) -> str:
    # Mixed surface forms so the model learns to normalise to ISO, not to copy.
    d = _dt.date.fromisoformat(iso)
    style = rng.randrange(4)
    if style == 0:
        return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"
    if style == 1:
        return f"{d.day} {MONTHS[d.month - 1]} {d.year}"
    if style == 2:
        return f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}"
    return iso


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _money(amount: float | int, currency: str, rng: random.Random) -> str:
    text = f"{amount:,.2f}" if isinstance(amount, float) else f"{amount:,}"
    return f"{CURRENCIES[currency]}{text}" if rng.random() < 0.5 else f"{text} {currency}"


def _cents(rng: random.Random, lo: int, hi: int) -> float:
    # Integer cents / 100 keeps json.dumps output short and exact (19.99, not 19.990000001).
    return rng.randint(lo * 100, hi * 100) / 100


def _name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST), rng.choice(LAST)


def _email(first: str, last: str, rng: random.Random) -> str:
    return f"{first.lower()}.{last.lower()}@{rng.choice(DOMAINS)}"


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


# ---------------------------------------------------------------------------
# Schema types.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaType:
    """One entity kind: its JSON Schema, a value sampler and its passage phrasings."""

    name: str
    schema: dict
    sample: Callable[[random.Random], dict]  # full gold object (every property)
    words: Callable[[dict, random.Random], dict]  # text fragments the templates use
    templates: tuple[str, ...]


def _obj(properties: dict, required: list[str], title: str | None = None) -> dict:
    schema: dict[str, Any] = {}
    if title:
        schema["title"] = title
    schema.update(type="object", properties=properties, required=required,
                  additionalProperties=False)
    return schema


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
DATE = {"type": "string", "format": "date"}
EMAIL = {"type": "string", "format": "email"}
STR_LIST = {"type": "array", "items": STR}


# --- person (train) ---------------------------------------------------------

def _person_sample(rng):
    first, last = _name(rng)
    return {"name": f"{first} {last}", "age": rng.randint(18, 79),
            "email": _email(first, last, rng), "city": rng.choice(CITIES),
            "is_student": rng.random() < 0.4, "languages": rng.sample(LANGUAGES, rng.randint(1, 3))}


def _person_words(v, rng):
    first = v["name"].split()[0]
    return {"first": first, "langs": _join(v["languages"]),
            "student": "is a student" if v["is_student"] else "is not a student",
            "student_yn": "yes" if v["is_student"] else "no",
            "studies": "currently studies part-time" if v["is_student"] else "finished school years ago"}


PERSON = SchemaType(
    "person",
    _obj({"name": STR, "age": {"type": "integer", "minimum": 0}, "email": EMAIL, "city": STR,
          "is_student": BOOL, "languages": STR_LIST}, ["name", "age", "email"], "person"),
    _person_sample, _person_words,
    ("{name} is {age} years old and lives in {city}. {first} {student} and speaks {langs}. "
     "Email: {email}.",
     "Meet {name}, a {age}-year-old from {city} who speaks {langs}. {first} {studies}; "
     "write to {email}.",
     "Contact card: {name} ({email}), age {age}, based in {city}. Languages: {langs}. "
     "Student: {student_yn}."),
)


# --- product (train) --------------------------------------------------------

def _product_sample(rng):
    return {"name": f"{rng.choice(PRODUCT_ADJ)} {rng.choice(PRODUCT_NOUN)}",
            "sku": f"{rng.choice('ABCDEFGHKLMNPRSTX')}{rng.choice('ABCDEFGHKLMNPRSTX')}-{rng.randint(100, 9999)}",
            "price": _cents(rng, 5, 400), "currency": rng.choice(list(CURRENCIES)),
            "in_stock": rng.random() < 0.6, "tags": rng.sample(TAGS, rng.randint(1, 3)),
            "dimensions": {"width_cm": rng.randint(5, 90), "height_cm": rng.randint(5, 120)}}


def _product_words(v, rng):
    d = v["dimensions"]
    return {"money": _money(v["price"], v["currency"], rng), "tag_list": _join(v["tags"]),
            "stock": "in stock" if v["in_stock"] else "out of stock",
            "avail": "available now" if v["in_stock"] else "currently sold out",
            "w": d["width_cm"], "h": d["height_cm"]}


PRODUCT = SchemaType(
    "product",
    _obj({"name": STR, "sku": STR, "price": NUM, "currency": {"enum": list(CURRENCIES)},
          "in_stock": BOOL, "tags": STR_LIST,
          "dimensions": _obj({"width_cm": NUM, "height_cm": NUM}, ["width_cm", "height_cm"])},
         ["name", "price", "currency", "in_stock"], "product"),
    _product_sample, _product_words,
    ("The {name} (SKU {sku}) costs {money} and is {stock}. It measures {w} x {h} cm "
     "and is tagged {tag_list}.",
     "New listing: {name}, {w} cm wide and {h} cm tall, priced at {money}. Status: {avail}. "
     "SKU {sku}; tags: {tag_list}.",
     "Item {sku} is the {name}. Price {money}, {stock}, size {w}x{h} cm. Tags - {tag_list}."),
)


# --- order (train) ----------------------------------------------------------

def _order_sample(rng):
    first, last = _name(rng)
    goods = rng.sample(PRODUCT_NOUN, rng.randint(1, 2))
    return {"order_id": f"ORD-{rng.randint(10000, 99999)}", "customer": f"{first} {last}",
            "items": [{"product": g, "quantity": rng.randint(1, 5)} for g in goods],
            "total": _cents(rng, 10, 900), "paid": rng.random() < 0.6,
            "order_date": _iso(_sample_date(rng))}


def _order_words(v, rng):
    return {"when": _say_date(v["order_date"], rng),
            "items_x": _join([f"{i['quantity']} x {i['product']}" for i in v["items"]]),
            "items_qty": _join([f"{i['product']} (qty {i['quantity']})" for i in v["items"]]),
            "amount": f"{v['total']:.2f}",
            "pay": "Payment has been received." if v["paid"] else "Payment is still pending.",
            "pay_short": "paid" if v["paid"] else "unpaid"}


ORDER = SchemaType(
    "order",
    _obj({"order_id": STR, "customer": STR,
          "items": {"type": "array", "items": _obj(
              {"product": STR, "quantity": {"type": "integer", "minimum": 1}},
              ["product", "quantity"])},
          "total": NUM, "paid": BOOL, "order_date": DATE},
         ["order_id", "items", "total", "order_date"], "order"),
    _order_sample, _order_words,
    ("Order {order_id} was placed by {customer} on {when} for {items_x}, totalling {amount}. {pay}",
     "{customer} ordered {items_qty} on {when}. Reference {order_id}, total {amount}, {pay_short}.",
     "Receipt {order_id} ({when}): {items_x}. Customer: {customer}. Total due {amount} - "
     "{pay_short}."),
)


# --- event (train) ----------------------------------------------------------

def _event_sample(rng):
    kind = rng.choice(EVENT_KINDS)
    return {"title": f"{rng.choice(EVENT_TOPICS)} {kind.title()}", "category": kind,
            "date": _iso(_sample_date(rng)), "city": rng.choice(CITIES),
            "venue": rng.choice(VENUES), "capacity": rng.randrange(50, 5000, 50),
            "free": rng.random() < 0.4}


def _event_words(v, rng):
    return {"when": _say_date(v["date"], rng), "cap": f"{v['capacity']:,}",
            "entry": "Entry is free." if v["free"] else "Tickets are required.",
            "entry_short": "free entry" if v["free"] else "paid tickets"}


EVENT = SchemaType(
    "event",
    _obj({"title": STR, "category": {"enum": EVENT_KINDS}, "date": DATE, "city": STR,
          "venue": STR, "capacity": INT, "free": BOOL}, ["title", "date", "city"], "event"),
    _event_sample, _event_words,
    ("The {title}, a {category}, takes place at {venue} in {city} on {when}. "
     "Up to {cap} guests; {entry_short}.",
     "Save the date: {when}, {venue}, {city}. The {title} ({category}) has room for {cap} "
     "people. {entry}",
     "{city} hosts the {title} on {when} at {venue}. It is a {category} for {cap} attendees. "
     "{entry}"),
)


# --- book (train) -----------------------------------------------------------

def _book_sample(rng):
    first, last = _name(rng)
    return {"title": f"The {rng.choice(BOOK_ADJ)} {rng.choice(BOOK_NOUN)}",
            "author": f"{first} {last}", "year": rng.randint(1950, 2024),
            "genre": rng.choice(GENRES), "pages": rng.randint(120, 900),
            "rating": rng.randint(10, 50) / 10, "ebook": rng.random() < 0.5}


def _book_words(v, rng):
    return {"ebook_txt": "also sold as an e-book" if v["ebook"] else "print only",
            "ebook_s": "An e-book edition exists." if v["ebook"] else "There is no e-book edition."}


BOOK = SchemaType(
    "book",
    _obj({"title": STR, "author": STR, "year": INT, "genre": {"enum": GENRES},
          "pages": INT, "rating": {"type": "number", "minimum": 0, "maximum": 5}, "ebook": BOOL},
         ["title", "author", "year", "genre"], "book"),
    _book_sample, _book_words,
    ("{title} is a {genre} novel by {author}, published in {year}. It runs {pages} pages, "
     "is rated {rating}/5 and is {ebook_txt}.",
     "{author} wrote {title} ({year}), a {pages}-page {genre} book. Readers give it {rating} "
     "out of 5. {ebook_s}",
     "Catalogue: {title} - {author}, {year}. Genre: {genre}. {pages} pp., rating {rating}. "
     "{ebook_s}"),
)


# --- flight (train) ---------------------------------------------------------

def _flight_sample(rng):
    code = rng.choice(list(AIRLINES))
    origin, dest = rng.sample(CITIES, 2)
    return {"flight_number": f"{code}{rng.randint(10, 999)}", "airline": AIRLINES[code],
            "origin": origin, "destination": dest,
            "departure_date": _iso(_sample_date(rng)), "seats_left": rng.randint(0, 60),
            "cabin": rng.choice(CABINS), "nonstop": rng.random() < 0.5}


def _flight_words(v, rng):
    return {"when": _say_date(v["departure_date"], rng),
            "cabin_txt": v["cabin"].replace("_", " "),
            "stops": "nonstop" if v["nonstop"] else "with one stop",
            "stops_s": "It flies direct." if v["nonstop"] else "It makes one stop on the way."}


FLIGHT = SchemaType(
    "flight",
    _obj({"flight_number": STR, "airline": STR, "origin": STR, "destination": STR,
          "departure_date": DATE, "seats_left": {"type": "integer", "minimum": 0},
          "cabin": {"enum": CABINS}, "nonstop": BOOL},
         ["flight_number", "origin", "destination", "departure_date"], "flight"),
    _flight_sample, _flight_words,
    ("{airline} flight {flight_number} from {origin} to {destination} departs on {when}, "
     "{stops}. {seats_left} {cabin_txt} seats are left.",
     "Booking update: {flight_number} ({airline}), {origin} -> {destination}, {when}. "
     "Cabin: {cabin_txt}; seats left: {seats_left}. {stops_s}",
     "On {when} {airline} operates {flight_number} {stops} between {origin} and {destination}; "
     "only {seats_left} seats remain in {cabin_txt}."),
)


# --- job posting (train) ----------------------------------------------------

def _job_sample(rng):
    company = rng.choice(COMPANIES)
    low = rng.randrange(30000, 120000, 5000)
    return {"title": rng.choice(JOB_TITLES), "company": company, "location": rng.choice(CITIES),
            "remote": rng.random() < 0.5,
            "salary": {"min": low, "max": low + rng.randrange(5000, 40000, 5000),
                       "currency": rng.choice(list(CURRENCIES))},
            "skills": rng.sample(SKILLS, rng.randint(1, 2)),
            "contact_email": f"jobs@{_slug(company)}.example"}


def _job_words(v, rng):
    s = v["salary"]
    return {"lo": f"{s['min']:,}", "hi": f"{s['max']:,}", "cur": s["currency"],
            "skill_list": _join(v["skills"]),
            "remote_txt": "remote work is possible" if v["remote"] else "the role is on-site",
            "remote_yn": "yes" if v["remote"] else "no"}


JOB = SchemaType(
    "job_posting",
    _obj({"title": STR, "company": STR, "location": STR, "remote": BOOL,
          "salary": _obj({"min": INT, "max": INT, "currency": {"enum": list(CURRENCIES)}},
                         ["min", "max", "currency"]),
          "skills": STR_LIST, "contact_email": EMAIL},
         ["title", "company", "location", "salary"], "job_posting"),
    _job_sample, _job_words,
    ("{company} is hiring a {title} in {location}; {remote_txt}. Pay: {lo}-{hi} {cur} per year. "
     "Skills: {skill_list}. Apply at {contact_email}.",
     "Job: {title} at {company} ({location}). Salary {cur} {lo} to {hi}. Remote: {remote_yn}. "
     "We want {skill_list}. Contact {contact_email}.",
     "Wanted in {location}: a {title} who knows {skill_list}. {company} pays {lo}-{hi} {cur}, "
     "and {remote_txt}. Send CVs to {contact_email}."),
)


# --- contact / address (HELD OUT) ------------------------------------------

def _contact_sample(rng):
    first, last = _name(rng)
    city = rng.choice(CITIES)
    return {"name": f"{first} {last}",
            "phone": f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
            "email": _email(first, last, rng),
            "address": {"street": f"{rng.randint(1, 250)} {rng.choice(STREETS)}", "city": city,
                        "postal_code": str(rng.randint(10000, 99999)),
                        "country": CITY_COUNTRY[city]}}


def _contact_words(v, rng):
    a = v["address"]
    return {"street": a["street"], "city": a["city"], "postal_code": a["postal_code"],
            "country": a["country"]}


CONTACT = SchemaType(
    "contact",
    _obj({"name": STR, "phone": STR, "email": EMAIL,
          "address": _obj({"street": STR, "city": STR, "postal_code": STR, "country": STR},
                          ["street", "city", "country"])},
         ["name", "address"], "contact"),
    _contact_sample, _contact_words,
    ("Please send the parcel to {name}, {street}, {postal_code} {city}, {country}. "
     "Phone {phone}, email {email}.",
     "You can reach {name} on {phone} or at {email}; the postal address is {street} in "
     "{city} ({postal_code}), {country}.",
     "Our new supplier contact is {name}. Office: {street}, {city} {postal_code}, {country}. "
     "Tel. {phone} / {email}."),
)


# --- recipe (HELD OUT) ------------------------------------------------------

def _recipe_sample(rng):
    dish = rng.choice(list(DISHES))
    veg, pool = DISHES[dish]
    return {"name": dish, "servings": rng.randint(1, 8), "prep_minutes": rng.randrange(10, 95, 5),
            "vegetarian": veg, "ingredients": rng.sample(pool, rng.randint(3, 5)),
            "difficulty": rng.choice(DIFFICULTY)}


def _recipe_words(v, rng):
    return {"ing": _join(v["ingredients"]),
            "veg": "It is vegetarian." if v["vegetarian"] else "It contains meat or fish.",
            "veg_short": "vegetarian" if v["vegetarian"] else "not vegetarian"}


RECIPE = SchemaType(
    "recipe",
    _obj({"name": STR, "servings": {"type": "integer", "minimum": 1},
          "prep_minutes": INT, "vegetarian": BOOL, "ingredients": STR_LIST,
          "difficulty": {"enum": DIFFICULTY}}, ["name", "servings", "ingredients"], "recipe"),
    _recipe_sample, _recipe_words,
    ("Tonight's {name} serves {servings} and takes {prep_minutes} minutes. You need {ing}. "
     "{veg} Difficulty: {difficulty}.",
     "A {difficulty} dish: {name} for {servings}, ready in {prep_minutes} min, {veg_short}, "
     "made with {ing}.",
     "Grandma's {name} ({veg_short}) uses {ing}; plan {prep_minutes} minutes, it feeds "
     "{servings}, and it is rated {difficulty} to cook."),
)


# --- weather report (HELD OUT) ----------------------------------------------

def _weather_sample(rng):
    return {"location": rng.choice(CITIES), "date": _iso(_sample_date(rng)),
            "temperature_c": rng.randint(-20, 80) / 2, "condition": rng.choice(CONDITIONS),
            "humidity_percent": rng.randint(10, 100), "wind_kmh": rng.randint(0, 90)}


def _weather_words(v, rng):
    return {"when": _say_date(v["date"], rng)}


WEATHER = SchemaType(
    "weather_report",
    _obj({"location": STR, "date": DATE, "temperature_c": NUM, "condition": {"enum": CONDITIONS},
          "humidity_percent": {"type": "integer", "minimum": 0, "maximum": 100},
          "wind_kmh": INT}, ["location", "date", "temperature_c", "condition"], "weather_report"),
    _weather_sample, _weather_words,
    ("Forecast for {location} on {when}: {condition}, {temperature_c} degrees C, humidity "
     "{humidity_percent}%, wind {wind_kmh} km/h.",
     "Expect a {condition} day in {location} ({when}) with temperatures near {temperature_c}C. "
     "Winds reach {wind_kmh} km/h and humidity sits at {humidity_percent} percent.",
     "{when}, {location}. Sky: {condition}. Temp {temperature_c} C; RH {humidity_percent}%; "
     "wind speed {wind_kmh} km/h."),
)


# --- hotel booking (HELD OUT) -----------------------------------------------

def _hotel_sample(rng):
    first, last = _name(rng)
    return {"guest": f"{first} {last}", "hotel": rng.choice(HOTELS),
            "check_in": _iso(_sample_date(rng)), "nights": rng.randint(1, 14),
            "room_type": rng.choice(ROOM_TYPES), "breakfast_included": rng.random() < 0.5}


def _hotel_words(v, rng):
    return {"when": _say_date(v["check_in"], rng),
            "bf": "breakfast included" if v["breakfast_included"] else "no breakfast",
            "bf_s": "Breakfast is included." if v["breakfast_included"]
            else "Breakfast is not included."}


HOTEL = SchemaType(
    "hotel_booking",
    _obj({"guest": STR, "hotel": STR, "check_in": DATE, "nights": {"type": "integer", "minimum": 1},
          "room_type": {"enum": ROOM_TYPES}, "breakfast_included": BOOL},
         ["guest", "hotel", "check_in", "nights"], "hotel_booking"),
    _hotel_sample, _hotel_words,
    ("Reservation confirmed for {guest} at {hotel}: a {room_type} room for {nights} nights "
     "from {when}, {bf}.",
     "{hotel} expects {guest} on {when}. Stay: {nights} nights in a {room_type}. {bf_s}",
     "Dear {guest}, your {nights}-night stay ({room_type} room) at {hotel} begins {when}; "
     "{bf}."),
)

TRAIN_TYPES: tuple[SchemaType, ...] = (PERSON, PRODUCT, ORDER, EVENT, BOOK, FLIGHT, JOB)
HELD_OUT_TYPES: tuple[SchemaType, ...] = (CONTACT, RECIPE, WEATHER, HOTEL)
_ALL_TYPES = {t.name: t for t in TRAIN_TYPES + HELD_OUT_TYPES}

# Instruction phrasings. Each wraps the passage and the compact schema.
TRAIN_INSTRUCTIONS = (
    "{passage}\n\nExtract the information above as JSON matching this schema:\n{schema}",
    "Read the text and return a JSON object that follows the schema.\nText: {passage}\n"
    "Schema: {schema}",
    "Schema: {schema}\n\nFill in this schema from the passage below. Answer with JSON only.\n"
    "{passage}",
    "Turn this into JSON.\n{passage}\nThe JSON must validate against: {schema}",
    "Text:\n{passage}\n\nOutput the extracted data as one JSON object conforming to {schema}",
)
HELD_OUT_INSTRUCTIONS = (
    "Here is a JSON Schema: {schema}\nUsing only facts stated in the following note, write "
    "the matching JSON object.\nNote: {passage}",
    "{passage}\n\nConvert the details in this message into structured data. Respond with raw "
    "JSON that is valid under the schema {schema}",
    "Given the passage \"{passage}\", produce the JSON record described by {schema}",
)
SCHEMA_FOLLOWING_INSTRUCTIONS = (
    "Produce one example instance of this JSON Schema. Reply with the JSON only.\n{schema}",
    "Here is a JSON Schema:\n{schema}\nWrite one realistic JSON value that is valid under it. "
    "Output only JSON.",
    "Invent a plausible record that satisfies the schema below and return it as raw JSON.\n"
    "{schema}",
)

# Hand-written schemas that are not entity types at all: top-level arrays, maps,
# numeric ranges, patterns. Only the schema-following suite uses them.
GENERIC_SCHEMAS: tuple[dict, ...] = (
    _obj({"x": NUM, "y": NUM}, ["x", "y"], "point"),
    _obj({"r": {"type": "integer", "minimum": 0, "maximum": 255},
          "g": {"type": "integer", "minimum": 0, "maximum": 255},
          "b": {"type": "integer", "minimum": 0, "maximum": 255}}, ["r", "g", "b"], "rgb_color"),
    _obj({"title": {"type": "string", "minLength": 1},
          "items": {"type": "array", "minItems": 1,
                    "items": _obj({"task": STR, "done": BOOL}, ["task", "done"])}},
         ["title", "items"], "todo_list"),
    _obj({"username": {"type": "string", "pattern": "^[a-z0-9_]{3,16}$"},
          "role": {"enum": ["admin", "editor", "viewer"]}, "created": DATE, "email": EMAIL},
         ["username", "role", "created", "email"], "user_account"),
    {"title": "stock_counts", "type": "object", "minProperties": 1,
     "additionalProperties": {"type": "integer", "minimum": 0}},
    {"title": "tag_list", "type": "array", "minItems": 2, "maxItems": 5, "uniqueItems": True,
     "items": {"type": "string", "minLength": 1}},
)

# Slices whose schemas must never appear in training data (check_no_overlap).
SEEN_SCHEMA_SLICES = frozenset({"in_distribution", "train_types"})

DEFAULT_FILES = {
    "train": "recipes/data/json_extraction_train.jsonl",
    "val": "recipes/data/json_extraction_val.jsonl",
    "json_extraction": "eval/suites/json_extraction.jsonl",
    "schema_following": "eval/suites/schema_following.jsonl",
}
DEFAULT_SIZES = {"train": 400, "val": 40, "in_distribution": 40, "held_out": 40,
                 "schema_following": 30}
VAL_SEED = 100


# ---------------------------------------------------------------------------
# Row generation.
# ---------------------------------------------------------------------------


def train_schema_types() -> list[str]:
    return [t.name for t in TRAIN_TYPES]


def held_out_schema_types() -> list[str]:
    return [t.name for t in HELD_OUT_TYPES]


def schema_for(type_name: str) -> dict:
    """The full schema of a schema type (a fresh copy; callers may mutate it)."""
    return json.loads(json.dumps(_ALL_TYPES[type_name].schema))


def compact(value: Any) -> str:
    """How schemas appear inside prompts: one line, no spaces, key order kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def canonical(value: Any) -> str:
    """Order-independent form for comparing schemas."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _schema_variant(stype: SchemaType, rng: random.Random) -> dict:
    # Sometimes drop optional properties so the model learns to emit what the schema
    # asks for, not everything the passage mentions.
    schema = schema_for(stype.name)
    optional = [k for k in schema["properties"] if k not in schema["required"]]
    n_drop = rng.choices([0, 1, 2], weights=[5, 3, 2])[0]
    for key in rng.sample(optional, min(n_drop, len(optional))):
        del schema["properties"][key]
    return schema


def _extraction_example(stype: SchemaType, instructions: tuple[str, ...],
                        rng: random.Random) -> tuple[str, dict, Any]:
    values = stype.sample(rng)
    schema = _schema_variant(stype, rng)
    passage = rng.choice(stype.templates).format(**values, **stype.words(values, rng))
    prompt = rng.choice(instructions).format(passage=passage, schema=compact(schema))
    gold = {k: v for k, v in values.items() if k in schema["properties"]}
    return prompt, schema, gold


def _unique_examples(types, instructions, n: int, rng: random.Random, seen: set[str]):
    """n examples cycling through types (balanced), redrawing any repeated prompt."""
    out = []
    for i in range(n):
        stype = types[i % len(types)]
        while True:
            prompt, schema, gold = _extraction_example(stype, instructions, rng)
            if prompt not in seen:
                break
        seen.add(prompt)
        out.append((stype, prompt, schema, gold))
    return out


def make_training_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows {"messages": [user, assistant]} from TRAIN types and TRAIN phrasings only."""
    rng = random.Random(f"train:{seed}")
    rows = []
    for _stype, prompt, _schema, gold in _unique_examples(TRAIN_TYPES, TRAIN_INSTRUCTIONS, n,
                                                           rng, set()):
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant",
                                   "content": json.dumps(gold, ensure_ascii=False)}]})
    return rows


def make_extraction_suite(n_in: int, n_held: int, seed: int = 1) -> list[dict]:
    """Suite rows: `in_distribution` (train types/phrasings, fresh values) then `held_out`."""
    rng = random.Random(f"extraction:{seed}")
    seen: set[str] = set()
    rows = []
    slices = (("in_distribution", "in", TRAIN_TYPES, TRAIN_INSTRUCTIONS, n_in),
              ("held_out", "held", HELD_OUT_TYPES, HELD_OUT_INSTRUCTIONS, n_held))
    for slice_name, tag, types, instructions, n in slices:
        for i, (stype, prompt, schema, gold) in enumerate(
                _unique_examples(types, instructions, n, rng, seen)):
            rows.append({"id": f"ext-{tag}-{i + 1:03d}-{stype.name}", "slice": slice_name,
                         "prompt": prompt, "schema": schema, "gold": gold})
    return rows


def make_schema_following_suite(n: int, seed: int = 2) -> list[dict]:
    """Suite rows asking for one instance of a schema (no gold), in three slices."""
    rng = random.Random(f"schema_following:{seed}")
    pools = (("train_types", [t.schema for t in TRAIN_TYPES]),
             ("held_out_types", [t.schema for t in HELD_OUT_TYPES]),
             ("generic", list(GENERIC_SCHEMAS)))
    rows = []
    for i in range(n):
        slice_name, pool = pools[i % len(pools)]
        schema = json.loads(json.dumps(pool[(i // len(pools)) % len(pool)]))
        prompt = rng.choice(SCHEMA_FOLLOWING_INSTRUCTIONS).format(schema=compact(schema))
        rows.append({"id": f"sf-{i + 1:03d}-{schema.get('title', 'schema')}",
                     "slice": slice_name, "prompt": prompt, "schema": schema})
    return rows


# ---------------------------------------------------------------------------
# Overlap check.
# ---------------------------------------------------------------------------


def _user_texts(row: dict) -> list[str]:
    if isinstance(row.get("prompt"), str):
        return [row["prompt"]]
    return [m["content"] for m in row.get("messages", [])
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)]


def _all_texts(row: dict) -> list[str]:
    texts = [m["content"] for m in row.get("messages", [])
             if isinstance(m, dict) and isinstance(m.get("content"), str)]
    if isinstance(row.get("prompt"), str):
        texts.append(row["prompt"])
    return texts


def _embedded_objects(text: str) -> list[Any]:
    """Every JSON object that starts at some '{' in text (nested ones included)."""
    decoder = json.JSONDecoder()
    found = []
    start = text.find("{")
    while start != -1:
        try:
            found.append(decoder.raw_decode(text, start)[0])
        except ValueError:
            pass
        start = text.find("{", start + 1)
    return found


def _training_schemas(train_rows: list[dict]) -> set[str]:
    schemas = set()
    for row in train_rows:
        if isinstance(row.get("schema"), dict):
            schemas.add(canonical(row["schema"]))
        for text in _user_texts(row):
            for obj in _embedded_objects(text):
                if isinstance(obj, dict):
                    schemas.add(canonical(obj))
    return schemas


def check_no_overlap(train_rows: list[dict], suite_rows: list[dict]) -> list[str]:
    """Problems with the split (empty list = OK).

    - no eval prompt occurs (even as a substring) in any training message;
    - no schema of a held-out slice (any slice except in_distribution/train_types)
      appears, canonically, anywhere in a training prompt.
    """
    # One NUL-separated blob makes "appears anywhere in training" a single substring test.
    train_blob = "\x00".join(t for r in train_rows for t in _all_texts(r))
    seen_schemas = _training_schemas(train_rows)
    problems = []
    for i, row in enumerate(suite_rows):
        rid = row.get("id", f"row {i + 1}")
        for text in _user_texts(row):
            if text and text in train_blob:
                problems.append(f"{rid}: eval prompt appears in the training data")
        held = row.get("slice", "all") not in SEEN_SCHEMA_SLICES
        if held and isinstance(row.get("schema"), dict) and canonical(row["schema"]) in seen_schemas:
            problems.append(f"{rid}: held-out schema ({row['schema'].get('title', '?')}) "
                            "appears in the training data")
    return problems


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def default_file_contents() -> dict[str, bytes]:
    """The shipped files, keyed like DEFAULT_FILES, as the exact bytes to write."""
    s = DEFAULT_SIZES
    train = make_training_rows(s["train"], seed=0)
    val = make_training_rows(s["val"], seed=VAL_SEED)
    extraction = make_extraction_suite(s["in_distribution"], s["held_out"], seed=1)
    following = make_schema_following_suite(s["schema_following"], seed=2)
    # Cheap insurance: refuse to write a split that leaks, and keep val apart from train.
    problems = (check_no_overlap(train + val, extraction + following)
                + check_no_overlap(train, val))
    if problems:
        raise RuntimeError("generated data overlaps: " + "; ".join(problems[:10]))
    return {"train": _jsonl_bytes(train), "val": _jsonl_bytes(val),
            "json_extraction": _jsonl_bytes(extraction),
            "schema_following": _jsonl_bytes(following)}


def write_default_files(repo_root: Path) -> dict[str, Path]:
    """Write the four shipped files under repo_root; returns key -> path."""
    written = {}
    for key, data in default_file_contents().items():
        path = Path(repo_root) / DEFAULT_FILES[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[key] = path
    return written


def stale_default_files(repo_root: Path) -> list[Path]:
    """Shipped files that are missing or differ from a fresh generation."""
    stale = []
    for key, data in default_file_contents().items():
        path = Path(repo_root) / DEFAULT_FILES[key]
        if not path.is_file() or path.read_bytes() != data:
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwenft.synth",
        description="Regenerate the JSON-extraction training data and eval suites.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files differ from a fresh generation")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_default_files(args.root)
        for path in stale:
            print(f"out of date: {path} (run: python -m qwenft.synth)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_default_files(args.root).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
