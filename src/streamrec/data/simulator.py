"""A seeded streaming-service simulator with a known ground-truth preference model.

``simulate(SimulatorConfig(...))`` returns a catalogue, a member table and a viewing log
generated from latent factors that are returned alongside, so a trained model can be
checked against the truth (``SimulatedData.true_scores``). It is the default data of the
training script and is fast enough for 100k members x 20k titles x 5M views in well under
a minute on two CPU cores (see ``scripts/benchmarks/bench_simulator.py``).

Ground truth
------------
* Genres. ``n_genres`` real genre names with real (MovieLens-25M) relative frequencies;
  genre ``g`` has a unit latent vector ``G[g]`` (``dim``).
* Titles. Each title has 1-3 distinct genres drawn by frequency, a year (recent years
  more common), a latent vector ``v = mean(G[genres]) + item_noise * e`` and a Zipf
  popularity: the title with popularity rank ``r`` has ``item_bias = -popularity_exponent
  * ln r``. Its one-sentence ``text`` names its genres and two mood words read off the
  noise part ``e`` (projection on fixed "dark/lighthearted"-style axes), so text carries
  the genre signal and part of the non-genre signal.
* Members. A taste ``u = a*G[f1] + (1-a)*G[f2] + taste_noise * e`` (favourite genres
  f1 != f2 drawn with frequencies tilted by the member's age group and country, so member
  features say something about taste; ``a = 1`` for half the members, else U(0.5, 1)),
  a lognormal activity, a preferred device and a signup time. ``e`` is a random unit
  vector throughout.
* Which titles a member watched. Member ``u`` watches exactly ``k_u`` distinct titles,
  drawn WITHOUT replacement from ``softmax(u . v / temperature + item_bias)`` (Gumbel-top-k,
  which equals drawing one by one and removing each drawn title). ``k_u`` is
  ``activity_sigma``-lognormal, at least 1, at most ``max_views_fraction * n_items`` and the
  ``k_u`` sum to exactly ``n_interactions``. ``true_scores`` returns these logits.
* Order and time (taste drift). Each member has a drift direction ``d_u`` (the unit
  vector of a "drift genre"). Their titles are watched in increasing order of
  ``drift_strength * v . d_u + N(0, 1)``, so a member's history moves towards the drift
  genre and recent views predict the next one (a leave-last-out split is learnable
  beyond the static truth). View times are sorted uniform times, in whole seconds and
  strictly increasing, between the member's signup and the end of the window.
* Watch fraction ``= clip(sigmoid(completion_slope * u . v + completion_bias +
  completion_noise * N(0, 1)), 0.01, 1)``: titles the member truly likes are watched
  further, so a watch-fraction threshold gives cleaner positives.
* Device: the preferred device with probability ``device_loyalty``, otherwise one of
  the other three, uniformly.

Determinism: the same config gives identical frames and arrays. All randomness comes
from numpy ``Generator``s seeded from ``(seed, stream, chunk)``, chunk sizes depend only
on the config, and each chunk is computed with single-threaded torch (chunks run in
parallel on Python threads), so the output does not depend on the number of threads.
"""

from __future__ import annotations

import math
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from streamrec.validation import is_finite_number, is_whole_number

# (name, relative frequency): the 18 MovieLens genres with their ML-25M title counts, then
# a few extra genres for larger ``n_genres``. ``n_genres`` keeps the first n.
GENRE_FREQUENCIES: tuple[tuple[str, float], ...] = (
    ("Drama", 25606), ("Comedy", 16870), ("Thriller", 8654), ("Romance", 7719),
    ("Action", 7348), ("Horror", 5989), ("Documentary", 5605), ("Crime", 5319),
    ("Adventure", 4145), ("Sci-Fi", 3595), ("Children", 2935), ("Animation", 2929),
    ("Mystery", 2925), ("Fantasy", 2731), ("War", 1874), ("Western", 1399),
    ("Musical", 1054), ("Film-Noir", 353),
    ("Family", 900), ("History", 700), ("Biography", 600), ("Sport", 400), ("Reality-TV", 300),
)
GENRES: tuple[str, ...] = tuple(name for name, _ in GENRE_FREQUENCIES)
DEVICES: tuple[str, ...] = ("tv", "mobile", "tablet", "web")
AGE_GROUPS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
COUNTRIES: tuple[str, ...] = ("US", "GB", "CA", "DE", "FR", "ES", "BR", "MX", "IN", "JP")

_DEVICE_SHARE = np.array([0.45, 0.30, 0.10, 0.15])  # preferred-device mix of members
_AGE_SHARE = np.array([0.16, 0.27, 0.23, 0.18, 0.16])
_COUNTRY_SHARE = np.array([0.30, 0.08, 0.05, 0.08, 0.07, 0.06, 0.12, 0.08, 0.11, 0.05])
_GENRES_PER_TITLE_SHARE = np.array([0.45, 0.35, 0.20])  # P(1, 2, 3 genres)
# Mood axes for the synthetic descriptions: a title's noise vector projected on a fixed
# random direction picks the first word if positive, the second if negative.
_MOOD_AXES: tuple[tuple[str, str], ...] = (
    ("dark", "lighthearted"), ("tense", "gentle"), ("cerebral", "escapist"),
    ("epic", "intimate"), ("gritty", "whimsical"), ("fast-paced", "slow-burning"),
)
_GENRE_WORD = {"Sci-Fi": "sci-fi", "Children": "children's", "Animation": "animated",
               "Film-Noir": "film-noir", "Reality-TV": "reality"}
_GENRE_SUBJECTS: dict[str, tuple[str, ...]] = {
    "Drama": ("a family torn apart by an inheritance", "a nurse starting over", "two brothers who stopped talking"),
    "Comedy": ("a wedding that goes wrong", "a hapless substitute teacher", "rival food-truck owners"),
    "Thriller": ("a witness on the run", "a hacker who sees too much", "a stranger on a night train"),
    "Romance": ("two letter-writers who never met", "a chef and a food critic", "old flames at a reunion"),
    "Action": ("a retired soldier pulled back in", "a heist on an armoured train", "a courier chased across a city"),
    "Horror": ("a house that remembers", "campers who hear something", "a cursed film reel"),
    "Documentary": ("the people who build bridges", "a year inside a kitchen", "the last glacier guides"),
    "Crime": ("a detective chasing a forger", "a crime family's youngest son", "a bank clerk turned thief"),
    "Adventure": ("a map to a sunken city", "a balloon crossing of the desert", "siblings lost in the jungle"),
    "Sci-Fi": ("the crew of a failing starship", "a scientist who copies her mind", "first contact on a moon base"),
    "Children": ("a girl and her talking bicycle", "a class pet on the loose", "a boy who shrinks himself"),
    "Animation": ("a lost robot finding home", "a fox who wants to fly", "toys left in an attic"),
    "Mystery": ("a locked-room death", "a missing lighthouse keeper", "letters from a dead novelist"),
    "Fantasy": ("an apprentice to a tired wizard", "a kingdom under a sleeping dragon", "a door to another world"),
    "War": ("a platoon behind enemy lines", "codebreakers racing the clock", "a field hospital under siege"),
    "Western": ("a sheriff with one last case", "a cattle drive gone wrong", "a bounty hunter's debt"),
    "Musical": ("a choir that must win", "a busker's big break", "a theatre saved by its stagehands"),
    "Film-Noir": ("a private eye and a femme fatale", "a night-club owner framed for murder", "a stolen ledger"),
    "Family": ("a road trip with grandparents", "a dog who finds his way back", "a farm saved by its kids"),
    "History": ("a forgotten queen", "the builders of a cathedral", "a revolution seen by a printer"),
    "Biography": ("a pioneering aviator", "a chess prodigy", "a reclusive composer"),
    "Sport": ("an underdog rowing team", "a boxer's last fight", "a coach who rebuilds a club"),
    "Reality-TV": ("amateur bakers competing", "couples renovating a ruin", "strangers on an island"),
}
_SETTINGS: tuple[str, ...] = (
    "in 1970s Naples", "on a remote island", "in a near-future Tokyo", "in a small prairie town",
    "in Victorian London", "on the Mongolian steppe", "in a Paris suburb", "aboard a cargo ship",
    "in a mountain village", "in New York at night", "in the Australian outback", "in a border town",
)
_TITLE_ADJECTIVES: tuple[str, ...] = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Endless", "Frozen",
    "Burning", "Lonely", "Secret", "Distant", "Wild", "Hollow", "Electric", "Paper", "Iron",
    "Velvet", "Quiet", "Northern", "Lost", "Bright", "Falling",
)
_TITLE_NOUNS: tuple[str, ...] = (
    "Harbor", "Garden", "Empire", "River", "Promise", "Signal", "Winter", "Circus", "Orchard",
    "Station", "Horizon", "Kingdom", "Letters", "Machine", "Island", "Crown", "Frontier",
    "Lantern", "Season", "Mirror", "Passage", "Echo", "Tide", "Summit",
)

# Members are processed in chunks of about this many logits so memory stays bounded
# (~8 MB per buffer). Depends only on the config, never on the machine, for determinism.
_CHUNK_LOGITS = 2**21
# Independent random streams, one per part of the simulation.
_STREAM_CATALOGUE, _STREAM_MEMBERS, _STREAM_VIEWS, _STREAM_DETAILS = 0, 1, 2, 3
_SECONDS_PER_DAY = 86_400


@dataclass
class SimulatorConfig:
    """Sizes and knobs of the simulated service. Defaults give a small, quick data set."""

    n_users: int = 5000  # members; user_id runs 1..n_users
    n_items: int = 2000  # titles; item_id runs 1..n_items
    n_interactions: int = 200_000  # exact number of rows of the viewing log (>= n_users)
    n_genres: int = 18  # uses the n most frequent genres of GENRES (at most 23)
    dim: int = 16  # latent taste dimension of members, titles and genres
    temperature: float = 0.2  # truth logit = taste . title / temperature + item_bias; lower = sharper taste
    popularity_exponent: float = 1.0  # Zipf exponent s: item_bias = -s * ln(popularity rank); 0 = none
    item_noise: float = 0.6  # norm of the non-genre part of a title vector (genre part has norm <= 1)
    taste_noise: float = 0.5  # norm of the idiosyncratic part of a member's taste
    activity_sigma: float = 1.0  # lognormal sigma of views per member; larger = heavier tail of power users
    max_views_fraction: float = 0.2  # a member watches at most this fraction of the catalogue
    drift_strength: float = 3.0  # how strongly view order follows the member's drift genre; 0 = random order
    completion_slope: float = 3.0  # watch_fraction = sigmoid(slope * taste . title + bias + noise * N(0, 1))
    completion_bias: float = -0.5  # ... so unrelated titles (taste . title = 0) average ~0.4
    completion_noise: float = 1.0  # ... std of the per-view noise inside the sigmoid
    device_loyalty: float = 0.8  # probability that a view is on the member's preferred device
    signup_spread: float = 0.75  # members sign up uniformly in the first this-fraction of the window
    start: str = "2024-01-01"  # first day of the log (UTC, anything pandas.Timestamp parses)
    days: int = 365  # length of the log window in days
    seed: int = 0  # same seed + same config -> identical data

    @property
    def max_views_per_user(self) -> int:
        """Cap on a member's number of views: ``max(1, floor(max_views_fraction * n_items))``."""
        return max(1, int(math.floor(self.max_views_fraction * self.n_items)))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and how to fix it."""
        for name in ("n_users", "n_items", "n_interactions", "n_genres", "dim", "days"):
            value = getattr(self, name)
            if not is_whole_number(value) or value < 1:
                raise ValueError(f"SimulatorConfig.{name} must be a positive integer, got {value!r}.")
        if not is_whole_number(self.seed) or self.seed < 0:
            raise ValueError(f"SimulatorConfig.seed must be a non-negative integer, got {self.seed!r}.")
        if self.n_genres > len(GENRES):
            raise ValueError(
                f"SimulatorConfig.n_genres={self.n_genres} but only {len(GENRES)} genres are defined "
                f"({', '.join(GENRES)}); use n_genres <= {len(GENRES)}."
            )
        positive = ("temperature",)
        non_negative = ("popularity_exponent", "item_noise", "taste_noise", "activity_sigma",
                        "drift_strength", "completion_slope", "completion_noise")
        fractions = ("max_views_fraction", "device_loyalty", "signup_spread")
        for name in positive + non_negative + fractions + ("completion_bias",):
            value = getattr(self, name)
            if not is_finite_number(value):
                raise ValueError(f"SimulatorConfig.{name} must be a finite number, got {value!r}.")
            if name in positive and value <= 0:
                raise ValueError(f"SimulatorConfig.{name} must be > 0, got {value!r}.")
            if name in non_negative and value < 0:
                raise ValueError(f"SimulatorConfig.{name} must be >= 0, got {value!r}.")
        if not 0 < self.max_views_fraction <= 1:
            raise ValueError(
                f"SimulatorConfig.max_views_fraction must be in (0, 1], got {self.max_views_fraction!r}."
            )
        if not 0 <= self.device_loyalty <= 1:
            raise ValueError(f"SimulatorConfig.device_loyalty must be in [0, 1], got {self.device_loyalty!r}.")
        if not 0 <= self.signup_spread < 1:
            raise ValueError(f"SimulatorConfig.signup_spread must be in [0, 1), got {self.signup_spread!r}.")
        if self.n_interactions < self.n_users:
            raise ValueError(
                f"SimulatorConfig.n_interactions={self.n_interactions} < n_users={self.n_users}, but every "
                f"member needs at least one view; raise n_interactions or lower n_users."
            )
        cap = self.max_views_per_user
        if self.n_interactions > self.n_users * cap:
            raise ValueError(
                f"SimulatorConfig.n_interactions={self.n_interactions} exceeds n_users * max views per member "
                f"= {self.n_users} * {cap} (max_views_fraction={self.max_views_fraction} of n_items="
                f"{self.n_items}); raise n_items, n_users or max_views_fraction, or lower n_interactions."
            )
        try:
            start = pd.Timestamp(self.start)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"SimulatorConfig.start={self.start!r} is not a date; use e.g. '2024-01-01'."
            ) from error
        if pd.isna(start):
            raise ValueError(f"SimulatorConfig.start={self.start!r} is not a date; use e.g. '2024-01-01'.")
        active_seconds = self.days * _SECONDS_PER_DAY * (1 - self.signup_spread)
        if active_seconds < cap:
            raise ValueError(
                f"The window is too short: the last members to sign up have {active_seconds:.0f} s left but "
                f"may need {cap} distinct view seconds; raise days or lower signup_spread."
            )


@dataclass
class SimulatedData:
    """The simulated service and its ground truth. Raw ids are 1-based: row ``i`` of
    ``user_factors`` is ``user_id = i + 1``, row ``j`` of ``item_factors`` is ``item_id = j + 1``.

    interactions: one row per view, sorted by (user_id, timestamp), timestamps strictly
        increasing per member, no repeated (user_id, item_id). Columns ``user_id`` int64,
        ``item_id`` int64, ``timestamp`` int64 (unix seconds, UTC), ``watch_fraction``
        float32 in (0, 1], ``device`` Categorical of DEVICES.
    items: one row per title, sorted by item_id. ``item_id`` int64, ``title`` str (not
        unique, like real catalogues), ``genres`` python list of 1-3 str, ``year`` int64,
        ``text`` str (one sentence naming the genres and two mood words).
    users: one row per member, sorted by user_id. ``user_id`` int64, ``age_group``
        (ordered), ``country``, ``preferred_device`` Categoricals, ``signup_timestamp``
        int64 unix seconds (the member has no view before it).
    user_factors: [n_users, dim] float32 ground-truth tastes.
    item_factors: [n_items, dim] float32 ground-truth title vectors.
    item_bias: [n_items] float32 log-popularity term, ``-popularity_exponent * ln rank``.
    user_drift: [n_users, dim] float32 unit drift directions that order each history.
    genre_factors: [n_genres, dim] float32 unit genre vectors, rows in ``genres`` order.
    genres: the genre names used.
    config: the config that produced all of this.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    user_drift: np.ndarray
    genre_factors: np.ndarray
    genres: tuple[str, ...]
    config: SimulatorConfig = field(repr=False)

    def true_scores(self, user_ids: np.ndarray) -> np.ndarray:
        """Ground-truth preference logits ``taste . title / temperature + item_bias``.

        Args:
            user_ids: [n] raw user ids in 1..n_users.
        Returns:
            [n, n_items] float32; column ``j`` is ``item_id = j + 1``. A member's views
            were drawn without replacement from the softmax of their row.
        """
        ids = np.asarray(user_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"user_ids must be a 1-d integer array, got shape {ids.shape} dtype {ids.dtype}.")
        n_users = self.user_factors.shape[0]
        if ids.size and (ids.min() < 1 or ids.max() > n_users):
            raise ValueError(
                f"user_ids must be raw ids in 1..{n_users}, got values in [{ids.min()}, {ids.max()}]."
            )
        scores = self.user_factors[ids - 1] @ self.item_factors.T
        scores /= np.float32(self.config.temperature)
        scores += self.item_bias
        return scores.astype(np.float32, copy=False)


def simulate(config: SimulatorConfig) -> SimulatedData:
    """Generate a catalogue, members and a viewing log from the ground truth above.

    Takes about 30 s and 1 GiB peak RSS for 100k members x 20k titles x 5M views on 2 CPU
    cores; the cost is dominated by n_users * n_items Gumbel draws. Uses
    ``torch.get_num_threads()`` worker threads and sets torch to one thread meanwhile
    (restored on return). Raises ``ValueError`` for an invalid config (see
    ``SimulatorConfig.validate``).
    """
    config.validate()
    genres = GENRES[: config.n_genres]
    genre_weights = np.array([w for _, w in GENRE_FREQUENCIES[: config.n_genres]], dtype=np.float64)
    genre_weights /= genre_weights.sum()

    rng = _rng(config.seed, _STREAM_CATALOGUE)
    genre_factors = _unit_rows(rng.standard_normal((config.n_genres, config.dim)))
    item_genres, item_genre_counts = _draw_title_genres(rng, config.n_items, genre_weights)
    genre_part = _mean_genre_vectors(genre_factors, item_genres, item_genre_counts)
    item_noise = config.item_noise * _unit_rows(rng.standard_normal((config.n_items, config.dim)))
    item_factors = (genre_part + item_noise).astype(np.float32)
    popularity_rank = rng.permutation(config.n_items) + 1
    item_bias = (-config.popularity_exponent * np.log(popularity_rank)).astype(np.float32)
    years = _draw_years(rng, config.n_items, last_year=pd.Timestamp(config.start).year)
    mood_axes = _unit_rows(rng.standard_normal((len(_MOOD_AXES), config.dim)))
    items = _items_frame(rng, genres, item_genres, item_genre_counts, years, item_noise @ mood_axes.T)

    rng = _rng(config.seed, _STREAM_MEMBERS)
    users, user_factors, user_drift, preferred_device = _members(rng, config, genre_factors, genre_weights)
    counts = _allocate_views(
        rng.lognormal(0.0, config.activity_sigma, config.n_users),
        total=config.n_interactions,
        cap=config.max_views_per_user,
    )
    window_start = int(pd.Timestamp(config.start).value // 10**9)
    window_seconds = config.days * _SECONDS_PER_DAY
    signup = window_start + np.floor(
        rng.random(config.n_users) * config.signup_spread * window_seconds
    ).astype(np.int64)
    users["signup_timestamp"] = signup

    interactions = _view_log(
        config, user_factors, item_factors, item_bias, user_drift, preferred_device,
        counts, signup, window_start + window_seconds,
    )
    return SimulatedData(
        interactions=interactions,
        items=items,
        users=users,
        user_factors=user_factors,
        item_factors=item_factors,
        item_bias=item_bias,
        user_drift=user_drift,
        genre_factors=genre_factors.astype(np.float32),
        genres=genres,
        config=config,
    )


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator for one (seed, stream...) so parts do not share draws."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """[n, d] rows scaled to unit norm."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _draw_title_genres(
    rng: np.random.Generator, n_items: int, genre_weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct genres per title, drawn by frequency without replacement (Gumbel-top-3).

    Returns [n_items, 3] genre indices (first = primary genre; columns past the count are
    padding) and [n_items] counts in 1..3 (capped at n_genres).
    """
    n_genres = genre_weights.size
    max_per_title = min(3, n_genres)
    keys = np.log(genre_weights) + rng.gumbel(size=(n_items, n_genres))
    top = np.argsort(-keys, axis=1, kind="stable")[:, :max_per_title]
    if max_per_title < 3:
        top = np.concatenate([top, np.repeat(top[:, :1], 3 - max_per_title, axis=1)], axis=1)
    counts = rng.choice(3, size=n_items, p=_GENRES_PER_TITLE_SHARE) + 1
    return top, np.minimum(counts, max_per_title)


def _mean_genre_vectors(genre_factors: np.ndarray, item_genres: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[n_items, dim] mean of each title's genre vectors."""
    used = np.arange(3)[None, :] < counts[:, None]  # [n_items, 3]
    summed = (genre_factors[item_genres] * used[:, :, None]).sum(axis=1)
    return summed / counts[:, None]


def _draw_years(rng: np.random.Generator, n_items: int, last_year: int) -> np.ndarray:
    """[n_items] int64 release years, recent years most common (exponential, mean age 15)."""
    age = np.floor(rng.exponential(15.0, n_items)).astype(np.int64)
    return np.maximum(last_year - age, 1920)


def _items_frame(
    rng: np.random.Generator,
    genres: tuple[str, ...],
    item_genres: np.ndarray,
    counts: np.ndarray,
    years: np.ndarray,
    mood_projection: np.ndarray,
) -> pd.DataFrame:
    """The catalogue table; ``mood_projection`` [n_items, n_axes] picks the mood words."""
    n_items = len(years)
    adjectives = rng.integers(len(_TITLE_ADJECTIVES), size=n_items)
    nouns = rng.integers(len(_TITLE_NOUNS), size=n_items)
    subjects = rng.integers(3, size=n_items)
    settings = rng.integers(len(_SETTINGS), size=n_items)
    strongest = np.argsort(-np.abs(mood_projection), axis=1, kind="stable")[:, :2]
    positive = np.take_along_axis(mood_projection, strongest, axis=1) > 0
    names, titles, texts = [], [], []
    for i in range(n_items):
        item_names = [genres[g] for g in item_genres[i, : counts[i]]]
        moods = [_MOOD_AXES[a][0 if p else 1] for a, p in zip(strongest[i], positive[i])]
        genre_words = " ".join(_GENRE_WORD.get(name, name.lower()) for name in item_names)
        subject = _GENRE_SUBJECTS[item_names[0]][subjects[i]]
        names.append(item_names)
        titles.append(f"The {_TITLE_ADJECTIVES[adjectives[i]]} {_TITLE_NOUNS[nouns[i]]} ({years[i]})")
        article = "An" if moods[0][0] in "aeiou" else "A"
        setting = _SETTINGS[settings[i]]
        texts.append(f"{article} {moods[0]}, {moods[1]} {genre_words} about {subject} {setting}.")
    return pd.DataFrame({
        "item_id": np.arange(1, n_items + 1, dtype=np.int64),
        "title": titles,
        "genres": names,
        "year": years.astype(np.int64),
        "text": texts,
    })


def _members(
    rng: np.random.Generator,
    config: SimulatorConfig,
    genre_factors: np.ndarray,
    genre_weights: np.ndarray,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Member table (without signup), tastes [n_users, dim], drift [n_users, dim] and
    preferred-device codes [n_users]."""
    n_users, n_genres = config.n_users, genre_weights.size
    age = rng.choice(len(AGE_GROUPS), size=n_users, p=_AGE_SHARE)
    country = rng.choice(len(COUNTRIES), size=n_users, p=_COUNTRY_SHARE)
    device = rng.choice(len(DEVICES), size=n_users, p=_DEVICE_SHARE)
    # Age groups and countries tilt which genres members favour (log-normal multipliers),
    # so member features carry some signal about taste.
    age_tilt = rng.normal(0.0, 0.8, (len(AGE_GROUPS), n_genres))
    country_tilt = rng.normal(0.0, 0.4, (len(COUNTRIES), n_genres))
    log_weights = np.log(genre_weights)[None, :] + age_tilt[age] + country_tilt[country]
    keys = log_weights + rng.gumbel(size=(n_users, n_genres))
    favourites = np.argsort(-keys, axis=1, kind="stable")[:, :2]  # two distinct genres
    if n_genres == 1:
        favourites = np.concatenate([favourites, favourites], axis=1)
    two = rng.random(n_users) < 0.5
    share = np.where(two, rng.uniform(0.5, 1.0, n_users), 1.0)
    first, second = genre_factors[favourites[:, 0]], genre_factors[favourites[:, 1]]
    taste = share[:, None] * first + (1 - share)[:, None] * second
    taste += config.taste_noise * _unit_rows(rng.standard_normal((n_users, config.dim)))
    drift_genre = rng.choice(n_genres, size=n_users, p=genre_weights)
    drift = genre_factors[drift_genre]
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "age_group": pd.Categorical.from_codes(age, categories=list(AGE_GROUPS), ordered=True),
        "country": pd.Categorical.from_codes(country, categories=list(COUNTRIES)),
        "preferred_device": pd.Categorical.from_codes(device, categories=list(DEVICES)),
    })
    return users, taste.astype(np.float32), drift.astype(np.float32), device.astype(np.int8)


def _allocate_views(weights: np.ndarray, total: int, cap: int) -> np.ndarray:
    """Integer views per member, proportional to ``weights`` and summing to exactly ``total``.

    Water-filling: ``clip(lam * weights, 1, cap)`` with ``lam`` found by bisection, then
    floors plus largest remainders. Requires ``len(weights) <= total <= len(weights) * cap``.
    Returns [n_users] int64 in [1, cap].
    """
    lo, hi = 0.0, cap / weights.min()
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        if np.clip(lam * weights, 1, cap).sum() < total:
            lo = lam
        else:
            hi = lam
    real = np.clip(hi * weights, 1, cap)
    counts = np.floor(real).astype(np.int64)
    remainder = real - counts
    missing = total - int(counts.sum())
    while missing != 0:  # one pass in practice; loops only to absorb float round-off
        if missing > 0:
            eligible = np.flatnonzero(counts < cap)
            chosen = eligible[np.argsort(-remainder[eligible], kind="stable")[:missing]]
            counts[chosen] += 1
        else:
            eligible = np.flatnonzero(counts > 1)
            chosen = eligible[np.argsort(remainder[eligible], kind="stable")[:-missing]]
            counts[chosen] -= 1
        remainder[chosen] = 0.0
        missing = total - int(counts.sum())
    return counts


def _view_log(
    config: SimulatorConfig,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    item_bias: np.ndarray,
    user_drift: np.ndarray,
    preferred_device: np.ndarray,
    counts: np.ndarray,
    signup: np.ndarray,
    window_end: int,
) -> pd.DataFrame:
    """Draw every member's titles (Gumbel-top-k on the truth logits), order them along the
    drift, time-stamp them and add watch fraction and device. Returns the interactions frame.

    Members go in chunks of ``_CHUNK_LOGITS // n_items`` rows, sorted by view count so a
    chunk's top-k width is close to each member's count. Each chunk has its own seeded
    generators and writes its own rows of the output, so chunks run on
    ``torch.get_num_threads()`` Python threads (torch and numpy release the GIL), each
    with single-threaded torch; the output does not depend on the thread count.
    """
    n_users, n_items = config.n_users, config.n_items
    total = config.n_interactions
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first row of each member
    out = {
        "item": np.empty(total, dtype=np.int64),
        "time": np.empty(total, dtype=np.int64),
        "fraction": np.empty(total, dtype=np.float32),
        "device": np.empty(total, dtype=np.int8),
    }
    users_t = torch.from_numpy(user_factors)
    items_t = torch.from_numpy(item_factors)
    items_over_tau = (items_t / config.temperature).T.contiguous()  # [dim, n_items]
    bias_t = torch.from_numpy(item_bias)
    drift_t = torch.from_numpy(user_drift)
    order = np.argsort(-counts, kind="stable")  # members by view count, heaviest first
    chunk_rows = min(n_users, max(1, _CHUNK_LOGITS // n_items))
    chunks = [order[first: first + chunk_rows] for first in range(0, n_users, chunk_rows)]

    n_workers = max(1, torch.get_num_threads())
    # One pair of [chunk_rows, n_items] buffers per worker, reused: a fresh 8 MB tensor
    # per chunk would page-fault on every chunk.
    buffers: queue.SimpleQueue[tuple[torch.Tensor, torch.Tensor]] = queue.SimpleQueue()
    for _ in range(n_workers):
        buffers.put((torch.empty(chunk_rows, n_items), torch.empty(chunk_rows, n_items)))

    def run_chunk(chunk: int) -> None:
        rows = chunks[chunk]
        k = counts[rows]
        width = int(k[0])
        rows_t = torch.from_numpy(rows)
        logits_buffer, noise_buffer = buffers.get()
        try:
            logits, noise = logits_buffer[: len(rows)], noise_buffer[: len(rows)]
            torch.addmm(bias_t, users_t[rows_t], items_over_tau, out=logits)  # [R, n_items]
            logits.sub_(_log_exponential_(noise, _rng(config.seed, _STREAM_VIEWS, chunk)))  # + Gumbel
            top = logits.topk(width, dim=1, sorted=True).indices  # [R, width], best first
        finally:
            buffers.put((logits_buffer, noise_buffer))
        valid = torch.arange(width)[None, :] < torch.from_numpy(k)[:, None]

        rng = _rng(config.seed, _STREAM_DETAILS, chunk)
        shape = (len(rows), width)
        title_vectors = items_t[top]  # [R, width, dim]
        along_drift = (title_vectors @ drift_t[rows_t][:, :, None]).squeeze(2)
        order_key = config.drift_strength * along_drift + torch.from_numpy(
            rng.standard_normal(shape, dtype=np.float32))
        order_key.masked_fill_(~valid, math.inf)
        in_time_order = order_key.argsort(dim=1, stable=True)
        top = top.gather(1, in_time_order)
        affinity = (title_vectors @ users_t[rows_t][:, :, None]).squeeze(2).gather(1, in_time_order)
        fraction = torch.sigmoid(
            config.completion_slope * affinity + config.completion_bias
            + config.completion_noise * torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        ).clamp_(0.01, 1.0)
        preferred = preferred_device[rows][:, None]
        other = (preferred + rng.integers(1, len(DEVICES), shape)) % len(DEVICES)
        device = np.where(rng.random(shape) < config.device_loyalty, preferred, other)
        times = _view_times(rng, signup[rows], window_end, k, width)

        valid_np = valid.numpy()
        destination = (offsets[rows][:, None] + np.arange(width)[None, :])[valid_np]
        out["item"][destination] = top.numpy()[valid_np] + 1
        out["fraction"][destination] = fraction.numpy()[valid_np]
        out["device"][destination] = device[valid_np]
        out["time"][destination] = times[valid_np]

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel over chunks instead; avoids OpenMP spin contention
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for _ in pool.map(run_chunk, range(len(chunks))):
                pass
    finally:
        torch.set_num_threads(torch_threads)

    return pd.DataFrame({
        "user_id": np.repeat(np.arange(1, n_users + 1, dtype=np.int64), counts),
        "item_id": out["item"],
        "timestamp": out["time"],
        "watch_fraction": out["fraction"],
        "device": pd.Categorical.from_codes(out["device"], categories=list(DEVICES)),
    })


def _log_exponential_(out: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Fill ``out`` (float32, contiguous) in place with ``log(-log U)``, U ~ Uniform[0, 1).

    That is minus a standard Gumbel, so ``logits - out`` is ``logits + Gumbel`` (one pass
    fewer than negating). A draw of exactly U = 0 (probability 2**-24) gives +inf here,
    i.e. that title is not drawn for that member.
    """
    rng.random(out=out.numpy(), dtype=np.float32)
    return out.log_().neg_().log_()


def _view_times(
    rng: np.random.Generator, signup: np.ndarray, window_end: int, k: np.ndarray, width: int
) -> np.ndarray:
    """[R, width] int64 unix seconds: for member r, k[r] sorted, strictly increasing times in
    [signup[r], window_end); columns past k[r] are padding."""
    span = (window_end - signup).astype(np.float64)  # validate() guarantees span >= k
    uniform = rng.random((len(k), width))
    uniform[np.arange(width)[None, :] >= k[:, None]] = 2.0  # padding sorts last
    uniform.sort(axis=1)
    # Column j of a member's k draws: floor(u_(j) * (span - k)) + j is strictly increasing.
    usable = np.maximum(span - k, 0.0)[:, None]
    return signup[:, None] + np.floor(uniform * usable).astype(np.int64) + np.arange(width)[None, :]
