"""The COCO-80 object vocabulary of CHAIR (Rohrbach et al., 2018), as data.

Reproduces the synonym list and hard-coded rules of the standard CHAIR script
(`LisaAnne/Hallucination` `utils/chair.py` + `data/synonyms.txt`, the version OPERA, VCD and VHR
evaluate with). Each synonym line starts with its canonical COCO category name. Kept verbatim,
including the script's typos ("televison", "solider", "phon", "knive"), except:

- duplicates within a line are listed once (they never changed a lookup);
- "iPhone" is lowercased (captions are lowercased, so the original entry could never match);
- " motor bike" and " cheesecake" lost a stray leading space that made them unmatchable;
- "stove top oven" is left out: the script merges only two-word phrases, so it never matched;
- the script's "wine glas" -> "wine glass" patch for its singulariser is not needed here
  (`extract` keeps vocabulary words such as "glass" as they are).

All values are immutable (tuples, frozensets, MappingProxyType).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

SYNONYM_LINES: tuple[tuple[str, ...], ...] = (
    ("person", "girl", "boy", "man", "woman", "kid", "child", "chef", "baker", "people", "adult",
     "rider", "children", "baby", "worker", "passenger", "sister", "biker", "policeman", "cop",
     "officer", "lady", "cowboy", "bride", "groom", "male", "female", "guy", "traveler", "mother",
     "father", "gentleman", "pitcher", "player", "skier", "snowboarder", "skater", "skateboarder",
     "foreigner", "caller", "offender", "coworker", "trespasser", "patient", "politician",
     "soldier", "grandchild", "serviceman", "walker", "drinker", "doctor", "bicyclist", "thief",
     "buyer", "teenager", "student", "camper", "driver", "solider", "hunter", "shopper",
     "villager"),
    ("bicycle", "bike", "unicycle", "minibike", "trike"),
    ("car", "automobile", "van", "minivan", "sedan", "suv", "hatchback", "cab", "jeep", "coupe",
     "taxicab", "limo", "taxi"),
    ("motorcycle", "scooter", "motor bike", "motor cycle", "motorbike", "moped"),
    ("airplane", "jetliner", "plane", "air plane", "monoplane", "aircraft", "jet", "airbus",
     "biplane", "seaplane"),
    ("bus", "minibus", "trolley"),
    ("train", "locomotive", "tramway", "caboose"),
    ("truck", "pickup", "lorry", "hauler", "firetruck"),
    ("boat", "ship", "liner", "sailboat", "motorboat", "dinghy", "powerboat", "speedboat", "canoe",
     "skiff", "yacht", "kayak", "catamaran", "pontoon", "houseboat", "vessel", "rowboat",
     "trawler", "ferryboat", "watercraft", "tugboat", "schooner", "barge", "ferry", "sailboard",
     "paddleboat", "lifeboat", "freighter", "steamboat", "riverboat", "battleship", "steamship"),
    ("traffic light", "street light", "traffic signal", "stop light", "streetlight", "stoplight"),
    ("fire hydrant", "hydrant"),
    ("stop sign",),
    ("parking meter",),
    ("bench", "pew"),
    ("bird", "ostrich", "owl", "seagull", "goose", "duck", "parakeet", "falcon", "robin",
     "pelican", "waterfowl", "heron", "hummingbird", "mallard", "finch", "pigeon", "sparrow",
     "seabird", "osprey", "blackbird", "fowl", "shorebird", "woodpecker", "egret", "chickadee",
     "quail", "bluebird", "kingfisher", "buzzard", "willet", "gull", "swan", "bluejay", "flamingo",
     "cormorant", "parrot", "loon", "gosling", "waterbird", "pheasant", "rooster", "sandpiper",
     "crow", "raven", "turkey", "oriole", "cowbird", "warbler", "magpie", "peacock", "cockatiel",
     "lorikeet", "puffin", "vulture", "condor", "macaw", "peafowl", "cockatoo", "songbird"),
    ("cat", "kitten", "feline", "tabby"),
    ("dog", "puppy", "beagle", "pup", "chihuahua", "schnauzer", "dachshund", "rottweiler",
     "canine", "pitbull", "collie", "pug", "terrier", "poodle", "labrador", "doggie", "doberman",
     "mutt", "doggy", "spaniel", "bulldog", "sheepdog", "weimaraner", "corgi", "cocker",
     "greyhound", "retriever", "brindle", "hound", "whippet", "husky"),
    ("horse", "colt", "pony", "racehorse", "stallion", "equine", "mare", "foal", "palomino",
     "mustang", "clydesdale", "bronc", "bronco"),
    ("sheep", "lamb", "ram", "goat", "ewe"),
    ("cow", "cattle", "oxen", "ox", "calf", "holstein", "heifer", "buffalo", "bull", "zebu",
     "bison"),
    ("elephant",),
    ("bear", "panda"),
    ("zebra",),
    ("giraffe",),
    ("backpack", "knapsack"),
    ("umbrella",),
    ("handbag", "wallet", "purse", "briefcase"),
    ("tie", "bow", "bow tie"),
    ("suitcase", "suit case", "luggage"),
    ("frisbee",),
    ("skis", "ski"),
    ("snowboard",),
    ("sports ball", "ball"),
    ("kite",),
    ("baseball bat",),
    ("baseball glove",),
    ("skateboard",),
    ("surfboard", "longboard", "skimboard", "shortboard", "wakeboard"),
    ("tennis racket", "racket"),
    ("bottle",),
    ("wine glass",),
    ("cup",),
    ("fork",),
    ("knife", "pocketknife", "knive"),
    ("spoon",),
    ("bowl", "container"),
    ("banana",),
    ("apple",),
    ("sandwich", "burger", "sub", "cheeseburger", "hamburger"),
    ("orange",),
    ("broccoli",),
    ("carrot",),
    ("hot dog",),
    ("pizza",),
    ("donut", "doughnut", "bagel"),
    ("cake", "cheesecake", "cupcake", "shortcake", "coffeecake", "pancake"),
    ("chair", "seat", "stool"),
    ("couch", "sofa", "recliner", "futon", "loveseat", "settee", "chesterfield"),
    ("potted plant", "houseplant"),
    ("bed",),
    ("dining table", "table", "desk"),
    ("toilet", "urinal", "commode", "lavatory", "potty"),
    ("tv", "monitor", "televison", "television"),
    ("laptop", "computer", "notebook", "netbook", "lenovo", "macbook", "laptop computer"),
    ("mouse",),
    ("remote",),
    ("keyboard",),
    ("cell phone", "mobile phone", "phone", "cellphone", "telephone", "phon", "smartphone",
     "iphone"),
    ("microwave",),
    ("oven", "stovetop", "stove"),
    ("toaster",),
    ("sink",),
    ("refrigerator", "fridge", "freezer"),
    ("book",),
    ("clock",),
    ("vase",),
    ("scissors",),
    ("teddy bear", "teddybear"),
    ("hair drier", "hairdryer"),
    ("toothbrush",),
)

COCO_CATEGORIES: tuple[str, ...] = tuple(line[0] for line in SYNONYM_LINES)

SYNONYM_TO_CANONICAL: Mapping[str, str] = MappingProxyType(
    {word: line[0] for line in SYNONYM_LINES for word in line}
)

# Two-word phrases merged (greedily, left to right) before the synonym lookup. Most map to
# themselves; "home plate" and "train track" are not COCO words and only stop "plate"/"train".
_SELF_MERGED_PHRASES: tuple[str, ...] = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "laptop computer", "home plate",
    "train track",
)

# "baby"/"adult" before an animal would otherwise fire "person" ("baby" and "adult" are on the
# person line); "animal" and "cub" are not COCO words, so "baby cub" yields no object at all.
ANIMAL_WORDS: tuple[str, ...] = (
    "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "animal", "cub",
)

# "passenger" before a vehicle would otherwise fire "person".
PASSENGER_VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")

TWO_WORD_PHRASES: Mapping[str, str] = MappingProxyType(
    {phrase: phrase for phrase in _SELF_MERGED_PHRASES}
    | {f"{age} {animal}": animal for animal in ANIMAL_WORDS for age in ("baby", "adult")}
    | {f"passenger {vehicle}": vehicle for vehicle in PASSENGER_VEHICLE_WORDS}
    | {"bow tie": "tie", "toilet seat": "toilet"}
)

# "the seat of the toilet" must not count a chair: when both words occur, "seat" is dropped.
TOILET_WORD = "toilet"
SEAT_WORD = "seat"

# Every single word that appears in a synonym or a phrase. `extract` leaves these as they are
# instead of singularising them (inflect turns "bus" into "bu" and "tennis" into "tenni").
KNOWN_WORDS: frozenset[str] = frozenset(
    part
    for entry in (*SYNONYM_TO_CANONICAL, *TWO_WORD_PHRASES, *TWO_WORD_PHRASES.values())
    for part in entry.split()
)


def canonical_name(word: str) -> str | None:
    """The COCO category of a vocabulary word or merged phrase ("men" is not one: singularise
    first), or None."""
    return SYNONYM_TO_CANONICAL.get(word.strip().lower())
