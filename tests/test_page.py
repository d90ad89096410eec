"""The staff page in a real browser: Debian's Chromium, driven by selenium, on `search serve` over a real store.

The store is built here by the real `indexer sync` with the offline EfficientNet-Lite0 weights: the
catalogue images of tests/data plus the reference image of one real store photo
(tests/data/page/IMG_6954.jpeg, a dev photo downscaled to 800 px, EXIF rotation applied) that
Lite0 ranks first. Screenshots are kept in $CATALOGUE_TEST_ARTEFACTS (default: the test's tmp_path).
Skipped only where chromium or chromedriver is missing.

Staff answers (/v1/feedback) change the store: each test that gives one takes them back afterwards
(`no_feedback_left`), so the shared server answers every test as the catalogue alone would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import DATA, eventually

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
PHOTO = DATA / "page" / "IMG_6954.jpeg"  # a black ankle boot on a shop shelf
EXPECTED = "KDI613VEAS900"  # its catalogue product (tests/data/page/KDI613VEAS900.jpeg)
CATEGORIES = ["W Accessories", "W Bags", "W RTW", "W SLG", "W Shoes", "Watches"]  # tests/data/products.csv + the boot
KEY = "secret"
FEEDBACK_KEY = "staff-only"
OTHER = "M3550HLEZJM900"  # another product (W Bags), picked by hand as a correction

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
    ),
]


# -- a store, servers and a browser ------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """The catalogue synced with Lite0, and a copy of the store (the embedded store is one process at a time)."""
    from click.testing import CliRunner

    from catalogue_cli.indexer import main as indexer

    root = tmp_path_factory.mktemp("page")
    dam = root / "dam"
    dam.mkdir()
    for image in [*(DATA / "dam").glob("*.jpeg"), *(DATA / "catalogue").glob("*.jpeg"), DATA / "page" / f"{EXPECTED}.jpeg"]:
        shutil.copy(image, dam / image.name)
    manifest = root / "products.csv"
    manifest.write_text((DATA / "products.csv").read_text().rstrip("\n") + f"\n{EXPECTED},W Shoes\n")
    store = root / "store"
    result = CliRunner().invoke(
        indexer,
        [
            "sync",
            str(dam),
            "--model",
            "efficientnet-lite0",
            "--qdrant-path",
            str(store),
            "--manifest",
            str(manifest),
            "--manifest-column",
            "MMC=product_id",
            "--manifest-column",
            "Product_BusinessUnitDesc=category",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    copy = root / "store-copy"
    shutil.copytree(store, copy)
    return store, copy


@contextmanager
def serving(store: Path, log: Path, env: dict | None = None, args: tuple[str, ...] = ()):
    """`search serve` as a subprocess on a free port; yields its base URL once /readyz says ready; always stopped."""
    import httpx

    port = _free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "catalogue_cli.search", "serve", "--qdrant-path", str(store), "--port", str(port), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        try:
            base = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                assert process.poll() is None, f"search serve exited with {process.returncode}:\n{log.read_text()}"
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200

            eventually(ready, timeout=120, interval=0.25, ignoring=(httpx.TransportError,), awaited=f"search serve at {base}")
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(stores, tmp_path_factory):
    with serving(stores[0], tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def no_feedback_left(server):
    """Takes back every answer a test gave on the shared server (their store views go with them)."""
    yield
    import httpx

    for entry in feedback(server, limit=1000)["entries"]:
        httpx.delete(f"{server}/v1/feedback/{entry['id']}", timeout=60).raise_for_status()
    assert feedback(server)["total"] == 0


@pytest.fixture
def artefacts(tmp_path) -> Path:
    folder = Path(os.environ.get("CATALOGUE_TEST_ARTEFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the tests ---------------------------------------------------------------------------------


def test_a_store_photo_names_its_product_with_a_box_and_cards(server, browser, artefacts):
    browser.set_window_size(1280, 1000)
    open_page(browser, server)
    browser.execute_script("""
        window.busyStates = [];
        const results = document.getElementById('results');
        new MutationObserver(() => busyStates.push([results.getAttribute('aria-busy'), document.getElementById('take').disabled,
            document.getElementById('status').textContent])).observe(results, {attributes: true, attributeFilter: ['aria-busy']});""")
    search_photo(browser, PHOTO)
    assert browser.execute_script("return busyStates") == [
        ["true", True, "Searching…"],
        ["false", False, f"Best match: {EXPECTED}, W Shoes."],
    ]
    answer = api_search(server, PHOTO)
    assert answer["matches"][0]["product_id"] == EXPECTED and answer["confident"]

    cards = browser.execute_script("""
        return [...document.querySelectorAll('#results .card')].map(c => ({
            id: c.querySelector('.product-id').textContent, category: c.querySelector('[data-field=category] dd')?.textContent,
            score: c.querySelector('.score').textContent,
            swatch: c.querySelector('.swatch') && getComputedStyle(c.querySelector('.swatch')).backgroundColor}));""")
    assert [c["id"] for c in cards] == [m["product_id"] for m in answer["matches"]]  # the page shows the API's answer
    assert cards[0]["category"] == "W Shoes" and cards[0]["score"] == f"Score {answer['matches'][0]['score']:.3f}"
    assert all(c["swatch"] and c["swatch"].startswith("rgb") for c in cards)
    assert browser.execute_script("return document.querySelector('.group').dataset.confident") == "true"
    assert not browser.find_elements("css selector", ".not-sure")
    assert EXPECTED in browser.find_element("id", "status").text  # announced through the live region

    until(browser, "const i = document.querySelector('#results .card img'); return i.complete && i.naturalWidth > 0")
    # The box sits where the API says, scaled from the photo as the server decoded it to the photo on screen.
    box, photo = browser.execute_script(
        "return ['.box', '.frame img'].map(s => document.querySelector(s).getBoundingClientRect().toJSON())"
    )
    x0, y0, x1, y1 = answer["groups"][0]["box"]
    assert (answer["width"], answer["height"]) == (600, 800)
    assert abs((box["left"] - photo["left"]) / photo["width"] - x0 / answer["width"]) < 0.01
    assert abs((box["top"] - photo["top"]) / photo["height"] - y0 / answer["height"]) < 0.01
    assert abs(box["width"] / photo["width"] - (x1 - x0) / answer["width"]) < 0.01
    assert abs(box["height"] / photo["height"] - (y1 - y0) / answer["height"]) < 0.01
    screenshot(browser, artefacts / "page-desktop.png")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []  # no script errors


def test_the_page_fits_a_phone(server, browser, artefacts):
    browser.set_window_size(360, 740)
    try:
        open_page(browser, server)
        assert browser.execute_script("return window.innerWidth") == 360
        take = browser.find_element("id", "take")
        assert take.is_displayed() and take.text == "Take a photo"
        assert browser.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return r.right <= 360 && r.bottom <= 740", take
        )
        search_photo(browser, PHOTO, field="camera")
        assert first_card(browser) == EXPECTED
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 360
        screenshot(browser, artefacts / "page-phone.png")
    finally:
        browser.set_window_size(1280, 1000)


def test_with_the_built_in_calibration_an_unsure_answer_is_left_to_check_without_a_warning(server, browser, tmp_path):
    nothing = noise_photo(tmp_path / "nothing.png")
    answer = api_search(server, nothing)
    assert answer["confident"] is False and answer["calibrated_for_store"] is False

    open_page(browser, server)
    search_photo(browser, nothing)
    assert not browser.find_elements("css selector", ".not-sure")  # the built-in calibration does not fit store photos
    check = browser.find_element("css selector", ".group .verdict.check")
    assert "Check the candidates" in check.text and "built-in calibration" in check.text
    assert browser.find_element("id", "status").text.startswith("Closest: ")


def test_a_product_not_in_the_catalogue_is_flagged_not_sure(stores, browser, artefacts, tmp_path):
    """Once the store has its own calibration (here written as `search eval --calibrate` would)."""
    from indexer.store import open_store
    from search.confidence import BUILT_IN, BY_HAND

    store = tmp_path / "calibrated"
    shutil.copytree(stores[1], store)
    with open_store(path=str(store)) as opened:
        opened.collection("catalogue").update_metadata(calibration={**BUILT_IN.to_metadata(), "kind": BY_HAND})
    nothing = noise_photo(tmp_path / "nothing.png")
    with serving(store, tmp_path / "serve.log") as base:
        answer = api_search(base, nothing)
        assert answer["confident"] is False and answer["calibrated_for_store"] is True

        open_page(browser, base)
        search_photo(browser, nothing)
        not_sure = browser.find_element("css selector", ".group .not-sure")
        assert not_sure.is_displayed() and "Not sure" in not_sure.text and "not in the catalogue" in not_sure.text
        assert browser.execute_script("return document.querySelector('.group').dataset.confident") == "false"
        ids = browser.execute_script("return [...document.querySelectorAll('#results .product-id')].map(e => e.textContent)")
        assert ids == [m["product_id"] for m in answer["matches"]]  # the candidates are still shown
        assert browser.find_element("id", "status").text.startswith("Not sure")
        screenshot(browser, artefacts / "page-not-sure.png")


def test_the_category_filter_comes_from_the_collection_and_filters(server, browser):
    import httpx

    assert httpx.get(f"{server}/v1/info").json()["categories"] == CATEGORIES
    open_page(browser, server)
    options = browser.execute_script("return [...document.querySelectorAll('#category option')].map(o => o.value)")
    assert options == ["", *CATEGORIES]
    assert not browser.find_element("id", "text-form").is_displayed()  # Lite0 has no text tower

    search_photo(browser, PHOTO)
    from selenium.webdriver.support.select import Select

    clear_results(browser)
    Select(browser.find_element("id", "category")).select_by_value("W Bags")  # searches the photo again
    wait_for_results(browser)
    categories = browser.execute_script(
        "return [...document.querySelectorAll('#results [data-field=category] dd')].map(e => e.textContent)"
    )
    assert categories and set(categories) == {"W Bags"}
    assert EXPECTED not in browser.execute_script("return document.getElementById('results').textContent")


def test_an_api_error_is_shown_in_its_one_line(server, browser, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not a photo")
    response = httpx_post(server, not_a_photo)
    assert response.status_code == 422
    open_page(browser, server)
    clear_results(browser)
    browser.find_element("id", "file").send_keys(str(not_a_photo))
    error = until(browser, "const e = document.getElementById('error'); return e.textContent && e")
    line = response.json()["error"]
    assert error.text == line[0].upper() + line[1:] and error.get_attribute("role") == "alert"
    assert browser.find_element("id", "take").is_enabled()


def test_text_search_when_the_model_has_a_text_tower(clip_with_tokenizer, browser, tmp_path):
    import httpx
    from click.testing import CliRunner
    from selenium.webdriver.common.keys import Keys

    from catalogue_cli.indexer import main as indexer

    store = tmp_path / "store"
    result = CliRunner().invoke(
        indexer,
        ["sync", str(DATA / "dam"), "--model", clip_with_tokenizer, "--qdrant-path", str(store), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    with serving(store, tmp_path / "serve.log") as base:
        answer = httpx.post(f"{base}/v1/search/text", json={"text": "black bag", "top_k": 10}, timeout=60).json()
        browser.get(f"{base}/")
        form = until(browser, "const f = document.getElementById('text-form'); return !f.hidden && f")
        assert not browser.find_element("id", "category-field").is_displayed()  # no manifest, no categories
        clear_results(browser)
        browser.find_element("id", "text").send_keys("black bag")
        form.find_element("css selector", "button").click()
        wait_for_results(browser)
        ids = browser.execute_script("return [...document.querySelectorAll('#results .product-id')].map(e => e.textContent)")
        assert ids == [m["product_id"] for m in answer["matches"]] and len(ids) == 10
        assert not browser.find_elements("css selector", "#results .photo, #results .box, #results .verdict")
        assert not browser.find_elements("css selector", "#results button.this-one")  # no photo to answer for

        # Picking the right product for a photo: a description lists the products it matches.
        search_photo(browser, PHOTO)
        shown = browser.execute_script("return [...document.querySelectorAll('#results .product-id')].map(e => e.textContent)")
        browser.find_element("css selector", ".pick summary").click()
        assert browser.find_element("css selector", ".pick label").text == "Product id or description"
        browser.switch_to.active_element.send_keys("black bag", Keys.ENTER)
        until(browser, "return document.querySelectorAll('.picks .card').length > 0")
        picks = browser.find_elements("css selector", ".picks .card")
        assert [c.find_element("css selector", ".product-id").text for c in picks] == ids[: len(picks)]
        other = next(c for c in picks if c.find_element("css selector", ".product-id").text != shown[0])
        product = other.find_element("css selector", ".product-id").text
        other.find_element("css selector", "button.this-one").click()
        wait_for_toast(browser, f"Saved: {product} (corrected)")
        (entry,) = feedback(base)["entries"]
        assert entry["product_id"] == product and entry["verdict"] == "corrected" and entry["answered"] == shown


def test_picking_products_whose_ids_a_url_mangles(clip_with_tokenizer, browser, artefacts, tmp_path):
    from test_product_ids import IDS, sync_hostile

    store, images = sync_hostile(clip_with_tokenizer, tmp_path)
    with serving(Path(store), tmp_path / "serve.log") as base:
        open_page(browser, base)
        search_photo(browser, images["AB/12"])
        shown = browser.execute_script("return [...document.querySelectorAll('#results .product-id')].map(e => e.textContent)")
        assert set(shown) <= set(images)  # the cards show the ids as the manifest spells them
        browser.find_element("css selector", ".pick summary").click()
        find = """const [text, done] = [arguments[0], arguments[arguments.length - 1]];
            const input = document.querySelector('.pick input'), note = document.querySelector('.pick-note');
            note.textContent = ''; input.value = text; input.form.requestSubmit();
            const wait = () => (note.textContent && note.textContent !== 'Looking…') ? done(
                [note.textContent, [...document.querySelectorAll('.picks .product-id')].map(e => e.textContent)]) : setTimeout(wait, 50);
            wait();"""
        for product in images:  # set as typed (chromedriver cannot type every character): the page's lookup is the test
            note, picked = browser.execute_async_script(find, product)
            assert (note, picked) == ("Is this it? Press “This one” to save it.", [product]), product

        # No product by that id: the page says so before it lists what matches it as a description.
        note, picked = browser.execute_async_script(find, "NO/SUCH?ID")
        assert note.startswith("No product has the id “NO/SUCH?ID”.") and picked

        product = IDS[8]  # '../../etc/passwd'
        note, picked = browser.execute_async_script(find, product)
        assert picked == [product]
        browser.find_element("css selector", ".picks .card button.this-one").click()
        wait_for_toast(browser, f"Saved: {product}")
        screenshot(browser, artefacts / "page-pick-odd-id.png")
        (entry,) = feedback(base)["entries"]
        assert entry["product_id"] == product and entry["answered"] == shown[: len(entry["answered"])]
        assert httpx_get(base, "/v1/products", product_id=product)["store_views"][0]["url"]
        assert [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"
        ] == []  # 404s: lookups


def test_a_server_with_an_api_key_asks_for_it_once(stores, browser, artefacts, tmp_path):
    with serving(stores[1], tmp_path / "serve.log", env={"CATALOGUE_API_KEY": KEY}) as base:
        browser.get(f"{base}/")
        form = until(browser, "const f = document.getElementById('key-form'); return !f.hidden && f")
        assert "needs an API key" in form.text
        assert browser.switch_to.active_element == browser.find_element("id", "key")
        screenshot(browser, artefacts / "page-api-key.png")
        browser.find_element("id", "key").send_keys("wrong")
        browser.find_element("css selector", "#key-form button").click()
        until(
            browser,
            "return !document.getElementById('key-form').hidden && document.getElementById('key-reason').textContent.includes('refused')",
        )

        browser.find_element("id", "key").send_keys(KEY)
        browser.find_element("css selector", "#key-form button").click()
        until(browser, "return document.querySelectorAll('#category option').length > 1")
        assert not browser.find_element("id", "key-form").is_displayed()
        search_photo(browser, PHOTO)
        assert first_card(browser) == EXPECTED
        # Catalogue images need the key too: fetched with it into blob URLs.
        until(
            browser,
            "const i = document.querySelector('#results .card img'); return i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0",
        )
        # No feedback key on this server: answers go with the API key, without asking for another.
        this_one(browser, EXPECTED)
        saved = wait_for_toast(browser, f"Saved: {EXPECTED}")
        assert not browser.find_element("id", "feedback-key-form").is_displayed()
        assert feedback(base, key=KEY)["entries"][0]["product_id"] == EXPECTED
        saved.find_element("css selector", "button.undo").click()
        wait_for_toast(browser, "Undone")
        assert feedback(base, key=KEY)["total"] == 0

        browser.refresh()  # the key is remembered on this device
        until(browser, "return document.querySelectorAll('#category option').length > 1")
        assert not browser.find_element("id", "key-form").is_displayed()


def test_this_one_saves_the_answer_and_the_next_search_wins_through_the_store_photo(server, browser, artefacts, no_feedback_left):
    browser.set_window_size(1280, 1000)
    open_page(browser, server)
    browser.get_log("browser")  # only this test's messages from here on
    answer = api_search(server, PHOTO)
    assert [m["source"] for m in answer["matches"]] == ["catalogue"] * len(answer["matches"])
    search_photo(browser, PHOTO)
    assert not browser.find_elements("css selector", "#results .badge")  # nothing confirmed yet

    this_one(browser, EXPECTED)
    saved = wait_for_toast(browser, f"Saved: {EXPECTED}")
    assert saved.find_element("css selector", "button.undo").text == "Undo"
    card = card_of(browser, EXPECTED)
    assert "confirmed" in card.get_attribute("class")
    button = card.find_element("css selector", "button.this-one")
    assert button.get_attribute("aria-pressed") == "true" and button.text == "✓ Saved"
    assert browser.find_element("css selector", ".group .saved-note").text == f"Saved: {EXPECTED}."

    # The server holds what the page showed: the product, the group's box and the answer, best first.
    listed = feedback(server)
    assert listed["total"] == 1
    entry = listed["entries"][0]
    assert entry["product_id"] == EXPECTED and entry["verdict"] == "confirmed" and entry["view"] is True
    assert entry["origin"] == "page"
    assert entry["box"] == [round(v) for v in answer["groups"][0]["box"]]
    assert entry["answered"] == [m["product_id"] for m in answer["matches"]]
    screenshot(browser, artefacts / "page-confirmed-desktop.png")

    # The same photo again: the product now wins through the store photo, and the card says so.
    assert api_search(server, PHOTO)["matches"][0]["source"] == "store"
    search_photo(browser, PHOTO)
    assert first_card(browser) == EXPECTED
    first = browser.find_element("css selector", "#results .card")
    assert first.find_element("css selector", ".badge").text == "store photo"
    assert first.find_element("css selector", "img").get_attribute("alt") == f"Store photo of {EXPECTED}"
    until(browser, "const i = document.querySelector('#results .card img'); return i.complete && i.naturalWidth > 0")
    assert len(browser.find_elements("css selector", "#results .badge")) == 1
    screenshot(browser, artefacts / "page-store-photo-desktop.png")

    # Undo (still offered after the next search) takes the answer back and the store photo with it.
    wait_for_toast(browser, f"Saved: {EXPECTED}").find_element("css selector", "button.undo").click()
    wait_for_toast(browser, f"Undone: {EXPECTED} is no longer saved.")
    assert feedback(server) == {"total": 0, "entries": []}
    search_photo(browser, PHOTO)
    assert first_card(browser) == EXPECTED and not browser.find_elements("css selector", "#results .badge")
    assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []


def test_not_in_catalogue_is_saved_and_taken_back_from_the_keyboard(server, browser, tmp_path, no_feedback_left):
    from selenium.webdriver.common.keys import Keys

    nothing = noise_photo(tmp_path / "nothing.png")
    open_page(browser, server)
    search_photo(browser, nothing)
    shown = browser.execute_script("return [...document.querySelectorAll('#results .product-id')].map(e => e.textContent)")
    button = browser.find_element("css selector", ".group button.not-in-catalogue")
    assert button.text == "Not in catalogue"
    button.send_keys(Keys.ENTER)  # a real button: the keyboard reaches and presses it
    wait_for_toast(browser, "Saved: not in catalogue")
    assert button.get_attribute("aria-pressed") == "true"
    assert browser.execute_script("return document.querySelector('.group').dataset.answer") == "not in catalogue"
    (entry,) = feedback(server)["entries"]
    assert entry["verdict"] == "not in catalogue" and entry["product_id"] is None and entry["view"] is False
    assert entry["answered"] == shown

    button.send_keys(Keys.SPACE)  # pressed again: taken back
    wait_for_toast(browser, "Undone: not in catalogue is no longer saved.")
    assert button.get_attribute("aria-pressed") == "false" and button.text == "Not in catalogue"
    assert feedback(server)["total"] == 0


def test_picking_another_product_by_id_saves_a_correction_on_a_phone(server, browser, artefacts, no_feedback_left):
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(360, 740)
    try:
        open_page(browser, server)
        search_photo(browser, PHOTO, field="camera")
        assert first_card(browser) == EXPECTED
        pick = browser.find_element("css selector", ".group details.pick")
        pick.find_element("css selector", "summary").click()
        field = until(browser, "const i = document.querySelector('.pick input'); return document.activeElement === i && i")
        assert browser.find_element("css selector", ".pick label").text == "Product id"  # Lite0: no descriptions
        field.send_keys("nothing-like-it", Keys.ENTER)
        until(browser, "return document.querySelector('.pick-note').textContent.includes('No product')")

        field.clear()
        field.send_keys(OTHER.lower(), Keys.ENTER)  # typed in lower case: found in capitals
        picked = until(browser, "return document.querySelector('.picks .card')")
        assert picked.find_element("css selector", ".product-id").text == OTHER
        assert picked.find_element("css selector", "[data-field=category] dd").text == "W Bags"
        product = httpx_get(server, f"/v1/products/{OTHER}")
        swatch = picked.find_element("css selector", ".colour span:last-child").text
        assert swatch == product["images"][0]["colour"]["hex"]
        until(browser, "const i = document.querySelector('.picks .card img'); return i.complete && i.naturalWidth > 0")

        picked.find_element("css selector", "button.this-one").click()
        wait_for_toast(browser, f"Saved: {OTHER} (corrected)")
        assert "confirmed" in picked.get_attribute("class")
        assert "confirmed" not in card_of(browser, EXPECTED).get_attribute("class")
        (entry,) = feedback(server)["entries"]
        assert entry["product_id"] == OTHER and entry["verdict"] == "corrected" and entry["answered"][0] == EXPECTED
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 360
        toast = browser.execute_script("return document.querySelector('#toast .toast').getBoundingClientRect().toJSON()")
        assert toast["x"] >= 0 and toast["x"] + toast["width"] <= 360 and toast["y"] + toast["height"] <= 740  # on screen
        screenshot(browser, artefacts / "page-pick-phone.png")
    finally:
        browser.set_window_size(1280, 1000)


def test_a_server_with_a_feedback_key_asks_for_it_before_saving(stores, browser, artefacts, tmp_path):
    from selenium.webdriver.common.keys import Keys

    with serving(stores[1], tmp_path / "serve.log", env={"CATALOGUE_FEEDBACK_KEY": FEEDBACK_KEY}) as base:
        open_page(browser, base)  # searching needs no key here
        search_photo(browser, PHOTO)
        this_one(browser, EXPECTED)
        form = until(browser, "const f = document.getElementById('feedback-key-form'); return !f.hidden && f")
        assert "needs the feedback key" in form.text
        assert browser.switch_to.active_element == browser.find_element("id", "feedback-key")
        assert not browser.find_element("id", "key-form").is_displayed()  # not the API key
        screenshot(browser, artefacts / "page-feedback-key.png")

        browser.find_element("id", "feedback-key").send_keys("wrong", Keys.ENTER)
        until(browser, "return document.getElementById('feedback-key-reason').textContent.includes('refused')")
        assert feedback(base, key=FEEDBACK_KEY)["total"] == 0

        browser.find_element("id", "feedback-key").send_keys(FEEDBACK_KEY, Keys.ENTER)  # saved, then the answer is sent
        saved = wait_for_toast(browser, f"Saved: {EXPECTED}")
        assert not browser.find_element("id", "feedback-key-form").is_displayed()
        (entry,) = feedback(base, key=FEEDBACK_KEY)["entries"]
        assert entry["product_id"] == EXPECTED and entry["verdict"] == "confirmed"
        saved.find_element("css selector", "button.undo").click()  # the key is remembered: Undo goes straight through
        wait_for_toast(browser, "Undone")
        assert feedback(base, key=FEEDBACK_KEY)["total"] == 0


def test_a_server_that_refuses_feedback_says_why(stores, browser, tmp_path):
    # Beyond loopback with no key at all: searching works, answers are refused with a reason.
    with serving(stores[1], tmp_path / "serve.log", args=("--host", "0.0.0.0")) as base:
        open_page(browser, base)
        search_photo(browser, PHOTO)
        this_one(browser, EXPECTED)
        error = wait_for_toast(browser, "Feedback is off on this server")
        assert error.get_attribute("role") == "alert" and "error" in error.get_attribute("class")
        assert not browser.find_element("id", "feedback-key-form").is_displayed()
        assert card_of(browser, EXPECTED).find_element("css selector", "button.this-one").get_attribute("aria-pressed") == "false"


# -- cards staff can read: the manifest's fields, chosen with --display / CATALOGUE_DISPLAY ----------

SHOWN = "KCQ858SBXS70K"  # the product searched below: its own catalogue image, so it comes first
MARKUP = 'Ankle boot <img src=x onerror="window.injected=1"><script>window.injected=2</script>'
LONG = "Calfskin" + "andsuede" * 24  # one long word, no hyphen or space: it must still wrap, not widen the card
DISPLAY = "Name,colour,material,price,category"


@pytest.fixture(scope="module")
def card_stores(tiny_clip, tmp_path_factory) -> tuple[Path, Path]:
    """The test DAM synced with the tiny CLIP twice: with a manifest of names, colours, materials, prices
    (SHOWN's name carries markup, its material is long, its price is missing), and without one."""
    import csv

    from click.testing import CliRunner

    from catalogue_cli.indexer import main as indexer

    root = tmp_path_factory.mktemp("cards")
    manifest = root / "products.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product_id", "category", "Name", "colour", "material", "price"])
        for image in sorted((DATA / "dam").glob("*.jpeg")):
            product = image.stem
            row = (MARKUP, "Black", LONG, "") if product == SHOWN else (f"Bag {product.lower()}", "Brown", "Leather", "390 €")
            writer.writerow([product, "W Bags", *row])
    stores = []
    for name, extra in (("named", ["--manifest", str(manifest)]), ("plain", [])):
        store = root / name
        args = ["sync", str(DATA / "dam"), "--model", tiny_clip, "--qdrant-path", str(store), "--quiet", *extra]
        result = CliRunner().invoke(indexer, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        stores.append(store)
    return stores[0], stores[1]


def test_cards_show_the_chosen_fields_as_text_and_wrap_on_a_phone(card_stores, browser, artefacts, tmp_path):
    env = {"CATALOGUE_DISPLAY": DISPLAY}
    with serving(card_stores[0], tmp_path / "serve.log", env=env, args=("--locate", "none")) as base:
        answer = api_search(base, DATA / "dam" / f"{SHOWN}.jpeg")
        assert answer["matches"][0]["display"]["title"] == MARKUP
        browser.set_window_size(360, 740)
        try:
            open_card_page(browser, base)
            search_photo(browser, DATA / "dam" / f"{SHOWN}.jpeg", field="camera")
            first = browser.execute_script("""
                const c = document.querySelector('#results .card');
                const size = (s) => parseFloat(getComputedStyle(c.querySelector(s)).fontSize);
                return {title: c.querySelector('.title').textContent, code: c.querySelector('.product-id.code').textContent,
                    smaller: size('.product-id.code') < size('.title'),
                    fields: [...c.querySelectorAll('.fields > div')].map(d => [d.dataset.field,
                        d.querySelector('dt').textContent, d.querySelector('dd').textContent])};""")
            assert first == {
                "title": MARKUP,  # the markup is shown as text ...
                "code": SHOWN,  # ... the product code stays, smaller
                "smaller": True,
                "fields": [["colour", "Colour", "Black"], ["material", "Material", LONG], ["category", "Category", "W Bags"]],
            }  # no price: the product has none, so no empty "Price" row
            # ... and nothing it carries became an element or ran.
            assert browser.execute_script(
                "return [document.querySelectorAll('#results script, #results img[src=\"x\"]').length, window.injected]"
            ) == [0, None]
            assert browser.find_element("css selector", "#results .card .product-id.code").is_displayed()
            others = browser.execute_script(
                "return [...document.querySelectorAll('#results .card .title')].map(t => t.textContent)"
            )
            assert len(others) == 5 and all(t.startswith("Bag ") for t in others[1:])
            text = browser.find_element("id", "results").text
            assert "undefined" not in text and "null" not in text and "No category" not in text
            assert_nothing_overflows(browser, 360)
            screenshot(browser, artefacts / "page-cards-phone.png")
        finally:
            browser.set_window_size(1280, 1000)


def test_cards_without_a_manifest_show_the_product_code_as_title(card_stores, browser, artefacts, tmp_path):
    with serving(card_stores[1], tmp_path / "serve.log", args=("--locate", "none")) as base:
        browser.set_window_size(360, 740)
        try:
            open_card_page(browser, base)
            search_photo(browser, DATA / "dam" / f"{SHOWN}.jpeg", field="camera")
            cards = browser.execute_script("""
                return [...document.querySelectorAll('#results .card')].map(c => ({
                    title: c.querySelector('.title').textContent, code: c.querySelectorAll('.product-id').length,
                    fields: c.querySelectorAll('.fields').length}));""")
            assert cards[0] == {"title": SHOWN, "code": 1, "fields": 0}  # the code is the title, shown once
            assert all(c["code"] == 1 and c["fields"] == 0 for c in cards)
            assert "No category" not in browser.find_element("id", "results").text
            assert_nothing_overflows(browser, 360)
            screenshot(browser, artefacts / "page-cards-no-manifest.png")
        finally:
            browser.set_window_size(1280, 1000)


def open_card_page(browser, base: str) -> None:
    """The page once /v1/info answered (a store without a manifest has no categories to wait for)."""
    browser.get(f"{base}/")
    until(browser, "return document.getElementById('about').textContent.includes('in the catalogue')")


def assert_nothing_overflows(browser, width: int) -> None:
    """No horizontal scroll, and no element of a card wider than its card or sticking out of it."""
    overflowing = browser.execute_script("""
        const bad = [];
        for (const card of document.querySelectorAll('#results .card')) {
            const edge = card.getBoundingClientRect();
            for (const e of [card, ...card.querySelectorAll('*')]) {
                const r = e.getBoundingClientRect();
                if (e.scrollWidth > e.clientWidth + 1 || r.left < edge.left - 0.5 || r.right > edge.right + 0.5)
                    bad.push(e.className || e.tagName);
            }
        }
        return bad;""")
    assert overflowing == []
    assert browser.execute_script("return document.documentElement.scrollWidth") <= width


# -- helpers -----------------------------------------------------------------------------------


def open_page(browser, base: str) -> None:
    browser.get(f"{base}/")
    until(browser, "return document.querySelectorAll('#category option').length > 1")  # /v1/info answered


def search_photo(browser, photo: Path, field: str = "file") -> None:
    clear_results(browser)
    browser.find_element("id", field).send_keys(str(photo))
    wait_for_results(browser)


def clear_results(browser) -> None:
    browser.execute_script(
        "document.getElementById('results').replaceChildren(); document.getElementById('error').textContent = ''"
    )


def wait_for_results(browser) -> None:
    until(
        browser,
        "const r = document.getElementById('results'); return r.getAttribute('aria-busy') === 'false'"
        " && (r.querySelector('.card') || document.getElementById('error').textContent)",
    )
    assert browser.find_element("id", "error").text == ""


def first_card(browser) -> str:
    return browser.find_element("css selector", "#results .card .product-id").text


def until(browser, script: str, *args, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script, *args), message=script)


def api_search(base: str, photo: Path) -> dict:
    response = httpx_post(base, photo)
    assert response.status_code == 200, response.text
    return response.json()


def httpx_post(base: str, photo: Path):
    import httpx

    return httpx.post(f"{base}/v1/search", params={"top_k": 5}, files={"image": (photo.name, photo.read_bytes())}, timeout=60)


def httpx_get(base: str, path: str, key: str | None = None, **params) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{base}{path}", params=params, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def feedback(base: str, key: str | None = None, limit: int = 50) -> dict:
    """What the server recorded, newest first (GET /v1/feedback)."""
    return httpx_get(base, "/v1/feedback", key=key, limit=limit)


def card_of(browser, product: str):
    """The result card of `product` (the first of the photo's located products)."""
    for card in browser.find_elements("css selector", "#results .group .cards:not(.picks) > .card"):
        if card.find_element("css selector", ".product-id").text == product:
            return card
    raise AssertionError(f"no card of {product}")


def this_one(browser, product: str) -> None:
    card_of(browser, product).find_element("css selector", "button.this-one").click()


def wait_for_toast(browser, text: str):
    """The banner at the bottom once it says `text`."""
    return until(
        browser,
        "const t = document.querySelector('#toast .toast'); return t && t.textContent.includes(arguments[0]) && t",
        text,
    )


def noise_photo(path: Path) -> Path:
    """A picture of nothing in the catalogue."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
    return path


def screenshot(browser, path: Path) -> None:
    """The whole page, not only the window."""
    import base64

    width, height = browser.execute_script("return [window.innerWidth, document.documentElement.scrollHeight]")
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
