"""The styled captions' word lists and templates, one block per caption style.

Data only: :mod:`.captions` draws from these tables (which fact picks which word is documented
there). Editing a table changes the captions, and the data caches that key on them.
"""
from __future__ import annotations

from omnibind_ros.sim.text import PROMPT_TEMPLATES

__all__ = ["COLOUR_WORDS", "EXTENT", "GEOMETRY_PARTS", "GLOW", "MOTION_VERBS", "MOTION_WORDS",
           "OUTLINE_NOUNS", "PITCH_WORDS", "PROMPTS", "REFLECTIVE", "SHAPED", "SIZE_LARGE_M",
           "SIZE_SMALL_M", "SOUND_ADJS", "SOUND_DECAY", "SOUND_NOUNS", "SOUND_WORDS",
           "TEMPERATURE_WORDS", "TEMPLATES", "TEXTURE_PHRASES", "TEXTURE_WORDS", "WARMTH",
           "WARM_ADJ"]

# ----------------------------------------------------------------------------- shared words
#: Object sizes (m) below / above which captions may say "small" / "large".
SIZE_SMALL_M, SIZE_LARGE_M = 0.115, 0.16
#: "-shaped" adjectives per shape (unknown shapes: "<name>-shaped").
SHAPED: dict[str, tuple[str, ...]] = {
    "mug": ("mug-shaped", "cup-shaped"), "duck": ("duck-shaped",),
    "bunny": ("bunny-shaped", "rabbit-shaped"), "torus": ("ring-shaped", "donut-shaped"),
    "cone": ("cone-shaped", "conical"), "teddy bear": ("bear-shaped", "teddy-shaped")}

# ----------------------------------------------------------------------------- appearance
#: Colour names used by appearance captions (and never by the other styles).
COLOUR_WORDS: tuple[str, ...] = ("red", "orange", "yellow", "green", "teal", "turquoise", "blue",
                                 "purple", "pink", "magenta", "brown", "grey", "silver", "white",
                                 "black")
_APP_FULL = (
    "a photo of a {size}{colour}{mat} {shape}",
    "a {finish} {colour}{mat} {shape} on the table",
    "there is a {colour}{shape} made of {noun} on the table",
    "a close-up photo of a {finish} {mat} {shape}",
    "the camera sees a {size}{colour}{mat} {shape}{light}",
    "a picture of a {colour}{shape} made of {noun}{light}",
    "a {size}{finish} {mat} {shape} in front of a plain wall",
)
_APP_SHAPE = (
    "a photo of a {size}{colour}{shape}",
    "a {finish} {colour}{shape} on the table",
    "the camera sees a {size}{shape}{light}",
    "a picture of something shaped like a {shape}",
)
_APP_MATERIAL = (
    "a photo of a {size}{colour}{mat} thing",
    "a {finish} {colour}object made of {noun} on the table",
    "a close-up of a {mat} object{light}",
)

# ----------------------------------------------------------------------------- sound
#: Sound nouns by impact character (chosen from decay and fundamental, not the material name).
SOUND_NOUNS: dict[str, tuple[str, ...]] = {
    "ringing": ("clang", "ping", "chime", "peal"),
    "knock": ("knock", "thud", "clonk", "tock"),
    "click": ("click", "clack", "tick", "tap")}
SOUND_ADJS = {"ringing": ("ringing", "resonant", "bell-like", "sustained"),
               "knock": ("dull", "hollow", "muffled", "soft"),
               "click": ("sharp", "crisp", "dry", "brittle")}
SOUND_DECAY = {"ringing": ("that rings on for a second", "with a long lingering decay",
                            "that slowly fades away"),
                "knock": ("that dies away at once", "with no ring to it", "that stops short"),
                "click": ("that is over in an instant", "with almost no decay",
                          "that stops immediately")}
#: Every sound noun and adjective (each sound caption contains at least one noun).
SOUND_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    w for table in (SOUND_NOUNS, SOUND_ADJS) for ws in table.values() for w in ws))
#: Pitch words by band; the band comes from the object's size.
PITCH_WORDS: dict[str, tuple[str, ...]] = {"high": ("high-pitched", "high", "bright"),
                                           "mid": ("mid-pitched", "medium-pitched"),
                                           "low": ("low-pitched", "deep", "low")}
_SOUND_FULL = (
    "the {adj} {sound} of a {size}{mat} {shape} being tapped",
    "a {pitch} {sound} as a {mat} {shape} is struck",
    "tapping a {mat} {shape} makes a {pitch} {adj} {sound}",
    "a {shape} made of {noun} hit with a stick: a {pitch} {sound} {decay}",
    "a {adj} {sound} {decay}, from a {size}{mat} {shape}",
    "someone taps a {mat} {shape} and it gives a {adj} {sound}",
)
_SOUND_SHAPE = (
    "the {adj} {sound} of a {size}{shape} being tapped",
    "a {pitch} {sound} from a {shape} {decay}",
    "tapping a {shape} gives a {pitch} {adj} {sound}",
)
_SOUND_MATERIAL = (
    "a {pitch} {adj} {sound} of {noun} being struck",
    "the {sound} of a {mat} object being tapped, {adj} and {pitch}",
    "something made of {noun} makes a {adj} {sound} {decay}",
    "the {adj} {sound} of a {size}{mat} thing being hit",
)

# ----------------------------------------------------------------------------- geometry
#: 3D parts a scan shows, per shape (unknown shapes: a generic outline).
GEOMETRY_PARTS: dict[str, tuple[str, ...]] = {
    "mug": ("a cylindrical body and a curved handle", "an open top and a looped handle",
            "a hollow cylindrical body and a side handle"),
    "duck": ("a rounded body, a raised head and a flat bill", "a plump body and a small head"),
    "bunny": ("a hunched body and two long ears", "a rounded back and upright ears"),
    "torus": ("a hole through the middle", "a round tube bent into a closed loop"),
    "cone": ("a pointed tip and a wide round base", "sloping sides that narrow to a point"),
    "teddy bear": ("a round head, small ears and stubby limbs",
                   "a seated body, arms and legs"),
}
EXTENT = {"mug": "tall", "duck": "long", "bunny": "long", "torus": "across", "cone": "tall",
           "teddy bear": "tall"}
_GEOM_FULL = (
    "a lidar scan of a {mat} {shape} about {cm} cm {extent}",
    "a 3d point cloud of a {shaped} {mat} object with {parts}",
    "a point cloud showing a {mat} {shape} with {parts}, about {cm} cm {extent}",
    "depth points of a {size}{shape} made of {noun}: {parts}",
    "a {density} scan of a {mat} {shape}{range}",
    "the 3d shape of a {mat} {shape}: {parts}",
)
_GEOM_SHAPE = (
    "a lidar scan of a {shape} about {cm} cm {extent}",
    "a 3d point cloud of a {shaped} object with {parts}",
    "the point cloud of a {size}{shape}: {parts}",
    "a {density} scan of a {shaped} object{range}",
)
_GEOM_MATERIAL = (
    "a lidar scan of a {mat} object about {cm} cm {extent}",
    "a 3d point cloud of something made of {noun}, roughly {cm} cm {extent}",
    "a {density} point cloud of a {size}{mat} object{range}",
)

# ----------------------------------------------------------------------------- heat
#: Temperature words; every heat caption contains one.
TEMPERATURE_WORDS: tuple[str, ...] = ("warm", "warmer", "hot", "lukewarm", "cool", "cooler",
                                      "cold", "colder", "chilly", "heated", "room temperature",
                                      "room-temperature", "ambient", "ambient-temperature",
                                      "degree", "degrees")
#: Attributive ("a warm mug") and predicative ("a mug, warmer than the room") warmth words.
WARM_ADJ = {"hot": ("warm", "hot", "heated"),
             "warm": ("slightly warm", "lukewarm", "mildly warm"),
             "ambient": ("room-temperature", "ambient-temperature"),
             "cool": ("cool", "slightly cool"),
             "cold": ("cold", "chilly")}
WARMTH = {"hot": ("much warmer than the room", "noticeably warm", "hot"),
           "warm": ("a little warmer than the room", "slightly warm", "lukewarm"),
           "ambient": ("at room temperature", "close to ambient temperature",
                       "at ambient temperature"),
           "cool": ("slightly cooler than the room", "a little cool"),
           "cold": ("much cooler than the room", "noticeably cold", "cold")}
GLOW = {"bright": ("glowing brighter than the background", "a bright blob in the thermal image",
                    "standing out bright against the room"),
         "even": ("barely standing out from the background",
                  "almost invisible in the thermal image", "blending into the background"),
         "dark": ("dark against the background", "a dark patch in the thermal image",
                  "looking colder than the room")}
REFLECTIVE = ("its reflective surface mirrors the colder room",
               "its low-emissivity surface reads colder than it really is",
               "its polished surface reflects the surroundings")
_HEAT_FULL = (
    "a thermal image of a {warm} {mat} {shape}",
    "a {warm} {mat} {shape} {glow}",
    "an infrared view of a {shape} made of {noun}, {warmth}",
    "a {size}{mat} {shape} at about {deg} degrees, {rel}",
    "a {mat} {shape} in the thermal camera, {rel}",
    "a {mat} {shape}, {warmth}; {reflect}",
)
_HEAT_SHAPE = (
    "a thermal image of a {warm} {shape}",
    "a {shape} {glow}, {warmth}",
    "an infrared view of a {size}{shape} at about {deg} degrees, {warmth}",
)
_HEAT_MATERIAL = (
    "a thermal image of a {warm} {mat} object",
    "something made of {noun} {glow}, {warmth}",
    "a {mat} thing in the infrared camera, {rel}",
    "a {mat} object at about {deg} degrees, {rel}; {reflect}",
)

# ----------------------------------------------------------------------------- motion
#: Motion words; every motion caption contains one.
MOTION_WORDS: tuple[str, ...] = ("moving", "sliding", "drifting", "gliding", "sweeping",
                                 "spinning", "turning", "rotating", "motion")
MOTION_VERBS = ("moving", "sliding", "drifting", "gliding", "sweeping")
OUTLINE_NOUNS = ("silhouette", "outline", "contour")
_MOTION_FULL = (
    "a {mat} {shape} {verb} {speed} {direction}{spin}",
    "events from a {mat} {shape} {verb} {direction}",
    "the edges of a {size}{mat} {shape} {verb} {direction} {speed}",
    "an event camera sees a {shape} made of {noun} {verb} {direction}{spin}",
    "the {outline} of a {mat} {shape} {verb} across the view{nodir}",
    "a moving {mat} {shape}{spin}{nodir}",
)
_MOTION_SHAPE = (
    "a {shaped} silhouette {verb} {direction}{spin}",
    "the outline of a {shape} {verb} {speed} {direction}",
    "flickering edges of a {shape} {verb} {direction}{spin}",
    "a {shaped} {outline} in motion{nodir}",
)
_MOTION_MATERIAL = (
    "a {mat} object {verb} {direction}{spin}",
    "something made of {noun} {verb} {speed} {direction}",
    "a {mat} thing in motion{spin}{nodir}",
)

# ----------------------------------------------------------------------------- texture
#: Tactile surface phrases per material texture id (never naming the material).
TEXTURE_PHRASES = {
    "grain": ("fibrous ridges", "a ridged grain", "grainy ridges"),
    "brushed": ("fine brushed lines", "faint parallel brush marks", "a sleek brushed finish"),
    "stipple": ("a fine stippled bumpiness", "tiny pebbled bumps", "a lightly pebbled surface"),
    "weave": ("a woven texture", "criss-cross threads"),
    "smooth": ("an even surface", "a featureless surface"),
}
#: Texture words; every texture caption contains one.
TEXTURE_WORDS: tuple[str, ...] = ("rough", "coarse", "bumpy", "textured", "smooth", "slick",
                                  "glassy", "hard", "rigid", "unyielding", "firm", "solid",
                                  "springy", "soft", "yielding", "fingertip", "touch",
                                  "touching", "feel", "feels", "tactile", "pressed", "pressing")
_TEX_FULL = (
    "a {rough}, {hard} {mat} {shape} under the fingertip",
    "touching a {mat} {shape}: {tex}, {hard} when pressed {press}",
    "the sensor presses {press} into a {mat} {shape} and feels {tex}",
    "a tactile reading of a {shape} made of {noun}: {rough} with {tex}",
    "{tex} felt on a {hard} {mat} {shape}{contact}",
    "pressing {depth} mm into a {rough} {mat} {shape}{contact}",
)
_TEX_SHAPE = (
    "touching a {shape}: {tex}, {hard}",
    "a fingertip pressed {press} on a {shape} feels {rough}{contact}",
    "a {rough} {shape} under the fingertip",
)
_TEX_MATERIAL = (
    "{rough} {noun} with {tex}, pressed {press}",
    "the feel of {noun}: {hard} and {rough}",
    "something made of {noun} under the fingertip, {rough} and {hard}",
    "pressing {depth} mm into {noun} that feels {hard} and {rough}{contact}",
)

#: (full, shape-only, material-only) caption templates per style.
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "appearance": (_APP_FULL, _APP_SHAPE, _APP_MATERIAL),
    "sound": (_SOUND_FULL, _SOUND_SHAPE, _SOUND_MATERIAL),
    "geometry": (_GEOM_FULL, _GEOM_SHAPE, _GEOM_MATERIAL),
    "heat": (_HEAT_FULL, _HEAT_SHAPE, _HEAT_MATERIAL),
    "motion": (_MOTION_FULL, _MOTION_SHAPE, _MOTION_MATERIAL),
    "texture": (_TEX_FULL, _TEX_SHAPE, _TEX_MATERIAL),
}

#: Zero-shot label prompts per style (one ``{}`` each for the class name).
PROMPTS: dict[str, tuple[str, ...]] = {
    "appearance": tuple(PROMPT_TEMPLATES),
    "sound": ("the sound of a {} being tapped.", "a recording of someone tapping a {}.",
              "the impact sound of a {}.", "a {} being struck.",
              "the noise a {} makes when hit."),
    "geometry": ("a 3d point cloud of a {}.", "a lidar scan of a {}.", "the 3d shape of a {}.",
                 "a depth scan of a {}.", "a point cloud of the {}."),
    "heat": ("a thermal image of a {}.", "an infrared photo of a {}.", "a heat map of a {}.",
             "the temperature of a {}.", "a thermal camera view of a {}."),
    "motion": ("an event camera recording of a moving {}.", "events from a {} moving past.",
               "the silhouette of a moving {}.", "a {} sliding across the view.",
               "the outline of a {} in motion."),
    "texture": ("the feel of touching a {}.", "a tactile reading of a {}.",
                "pressing a fingertip on a {}.", "the surface texture of a {}.",
                "a {} under the fingertip."),
}
