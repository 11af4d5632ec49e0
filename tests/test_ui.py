"""The web UI at `/`, driven in a real headless Chromium against a real
gunicorn with two gevent workers."""
import shutil
import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from logsvc.testing import ADMIN_TOKEN, INGEST, Server, make_entry

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.server,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="needs Debian's chromium and chromium-driver "
                                        "(installed by .ci/run)")]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def chromium(*extra_flags):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 *extra_flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    return driver


@pytest.fixture
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def ingest(server, entries):
    response = requests.post(server.url + INGEST, json=entries, headers=ADMIN, timeout=10)
    assert response.status_code == 200
    return response.json()


def wait(condition, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def row_ids(browser):
    return browser.execute_script(
        "return [...document.querySelectorAll('#entries tbody tr[data-id]')]"
        ".map(r => Number(r.dataset.id))")


def sign_in(browser, server, token=ADMIN_TOKEN, user=None, password=None, path="/"):
    from selenium.webdriver.common.by import By
    browser.get(server.url + path)
    wait(lambda: browser.find_element(By.ID, "signin-token").is_displayed())
    if user:
        browser.find_element(By.ID, "signin-user").send_keys(user)
        browser.find_element(By.ID, "signin-password").send_keys(password)
    else:
        browser.find_element(By.ID, "signin-token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait(lambda: browser.find_element(By.ID, "main").is_displayed())


def state(browser):
    return browser.execute_script("return document.getElementById('state').textContent")


def test_sign_in_then_live_entries_arrive_at_the_top(browser, server):
    ingest(server, [make_entry(i, tsMs=None) for i in range(5)])
    sign_in(browser, server)
    wait(lambda: state(browser) == "live")
    wait(lambda: row_ids(browser) == [5, 4, 3, 2, 1])
    ingest(server, [make_entry(9, tsMs=None, url="/fresh")])
    wait(lambda: row_ids(browser)[:1] == [6])
    assert browser.execute_script("return document.getElementById('tile-total').textContent") in ("5", "6")


def test_a_wrong_token_is_refused_with_a_message(browser, server):
    from selenium.webdriver.common.by import By
    browser.get(server.url + "/")
    wait(lambda: browser.find_element(By.ID, "signin-token").is_displayed())
    browser.find_element(By.ID, "signin-token").send_keys("nope")
    browser.find_element(By.CSS_SELECTOR, "#signin-form button").click()
    wait(lambda: browser.find_element(By.ID, "signin-error").text)
    assert not browser.find_element(By.ID, "main").is_displayed()


def test_a_scoped_user_sees_only_their_scope(browser, server):
    requests.post(server.url + "/api/proxy-logs/_admin/users", headers=ADMIN, timeout=10,
                  json={"username": "ada", "password": "correct horse", "projectId": "proj_1",
                        "containerId": "cnt_1"})
    ingest(server, [make_entry(i, tsMs=None) for i in range(30)])
    sign_in(browser, server, user="ada", password="correct horse")
    wait(lambda: len(row_ids(browser)) == 2)  # i = 1 and 16 are proj_1/cnt_1
    containers = browser.execute_script(
        "return [...document.querySelectorAll('#entries tbody tr')].map(r => r.cells[8].textContent)")
    assert set(containers) == {"cnt_1"}
    assert browser.execute_script("return document.getElementById('tile-total').textContent") == "2"


def test_filters_live_in_the_page_url_and_a_shared_url_restores_them(browser, server):
    from selenium.webdriver.common.by import By
    ingest(server, [make_entry(i, tsMs=None) for i in range(24)])
    sign_in(browser, server)
    browser.find_element(By.ID, "mode-search").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=level][value=error]").click()
    browser.find_element(By.NAME, "serviceName").send_keys("user-api")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait(lambda: "level=error" in browser.current_url)
    query = parse_qs(urlparse(browser.current_url).query)
    assert query == {"level": ["error"], "serviceName": ["user-api"], "mode": ["search"]}
    expected = sorted((i + 1 for i in range(24) if make_entry(i)["serviceName"] == "user-api"
                       and make_entry(i)["status"] in (500, 503)), reverse=True)
    wait(lambda: row_ids(browser) == expected)
    browser.get(browser.current_url)  # the shared link, in a fresh page
    wait(lambda: row_ids(browser) == expected)
    assert browser.find_element(By.CSS_SELECTOR, "input[name=level][value=error]").is_selected()


def test_clicking_an_entry_shows_its_fields_and_bodies_and_its_trace(browser, server):
    from selenium.webdriver.common.by import By
    ingest(server, [make_entry(0, tsMs=None, traceId="t-1", requestBody="hello body"),
                    make_entry(1, tsMs=None, traceId="t-2"),
                    make_entry(2, tsMs=None, traceId="t-1")])
    sign_in(browser, server, path="/?mode=search")
    wait(lambda: row_ids(browser) == [3, 2, 1])
    browser.find_element(By.CSS_SELECTOR, "#entries tbody tr[data-id='1']").click()
    wait(lambda: "hello body" in browser.find_element(By.ID, "detail-body").text)
    browser.find_element(By.CSS_SELECTOR, "#entries tbody tr[data-id='1'] a.trace").click()
    wait(lambda: row_ids(browser) == [1, 3])  # the whole trace, in order
    assert "traceId=t-1" in browser.current_url


def test_pause_counts_new_entries_and_resume_shows_them(browser, server):
    from selenium.webdriver.common.by import By
    sign_in(browser, server)
    wait(lambda: state(browser) == "live")
    browser.find_element(By.TAG_NAME, "body").send_keys("p")
    ingest(server, [make_entry(i, tsMs=None) for i in range(3)])
    wait(lambda: browser.find_element(By.ID, "pending").text == "3 new")
    assert row_ids(browser) == []
    browser.find_element(By.ID, "pause").click()
    wait(lambda: row_ids(browser) == [3, 2, 1])


def test_a_server_restart_shows_no_gap_and_no_duplicate(browser, tmp_path):
    server = Server(tmp_path).start()
    try:
        ingest(server, [make_entry(i, tsMs=None) for i in range(3)])
        sign_in(browser, server)
        wait(lambda: row_ids(browser) == [3, 2, 1])
        server.kill()
        wait(lambda: state(browser).startswith("reconnecting"))
        ingest_later = Server(tmp_path, port=server.port).start()
        server = ingest_later
        ingest(server, [make_entry(i, tsMs=None) for i in range(2)])
        wait(lambda: row_ids(browser) == [5, 4, 3, 2, 1], seconds=30)
        assert state(browser) == "live"
    finally:
        server.stop()


@pytest.mark.sqlite_only("the page's reconnecting does not depend on the engine")
@pytest.mark.parametrize("outage_s", [5, 30])
def test_the_live_view_comes_back_after_an_outage_with_every_entry_once(
        browser, tmp_path, make_app, outage_s):
    server = Server(tmp_path).start()
    try:
        ingest(server, [make_entry(i, tsMs=None) for i in range(3)])
        sign_in(browser, server)
        wait(lambda: row_ids(browser) == [3, 2, 1])
        server.stop()
        wait(lambda: state(browser).startswith("reconnecting in"))
        # Entries written while the server is down (straight into its store).
        from logsvc.testing import Store

        Store(make_app(data_dir=tmp_path).test_client()).ingest(
            [make_entry(i, tsMs=None) for i in range(4)])
        time.sleep(outage_s)
        assert state(browser).startswith("reconnecting")
        server = Server(tmp_path, port=server.port).start()
        ingest(server, [make_entry(i, tsMs=None) for i in range(2)])
        wait(lambda: row_ids(browser) == [9, 8, 7, 6, 5, 4, 3, 2, 1], seconds=30)
        assert state(browser) == "live"
    finally:
        server.stop()


def test_the_page_fits_a_narrow_screen(browser, server):
    ingest(server, [make_entry(i, tsMs=None, url="/a/very/long/url/" + "x" * 80) for i in range(3)])
    browser.set_window_size(400, 800)
    sign_in(browser, server)
    wait(lambda: len(row_ids(browser)) == 3)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1


def test_the_page_loads_nothing_from_elsewhere(server):
    for path in ("/", "/ui/app.js", "/ui/app.css"):
        text = requests.get(server.url + path, timeout=10).text
        assert "http://" not in text and "https://" not in text


def test_new_entries_do_not_move_the_rows_a_reader_scrolled_to(browser, server):
    ingest(server, [make_entry(i, tsMs=None) for i in range(80)])
    sign_in(browser, server)
    wait(lambda: len(row_ids(browser)) == 50)  # the replay
    top_row = browser.execute_script(
        "const list = document.querySelector('.list'); list.scrollTop = 400;"
        "const rows = [...document.querySelectorAll('#entries tbody tr')];"
        "const box = list.getBoundingClientRect();"
        "return rows.find(r => r.getBoundingClientRect().top >= box.top + 30).dataset.id")
    ingest(server, [make_entry(i, tsMs=None) for i in range(10)])
    wait(lambda: len(row_ids(browser)) == 60)
    still = browser.execute_script(
        "const list = document.querySelector('.list');"
        "const rows = [...document.querySelectorAll('#entries tbody tr')];"
        "const box = list.getBoundingClientRect();"
        "return rows.find(r => r.getBoundingClientRect().top >= box.top + 30).dataset.id")
    assert still == top_row


def test_slowest_view_route_table_and_tiles_follow_the_filters(browser, server):
    from selenium.webdriver.common.by import By
    ingest(server, [make_entry(i, tsMs=None, url=f"/v1/{('users', 'teams')[i % 2]}/{i}",
                               durationMs=(i * 37) % 400 + 1) for i in range(20)])
    sign_in(browser, server, path="/?mode=slowest")
    slowest = sorted(range(20), key=lambda i: (-((i * 37) % 400 + 1), -i))
    wait(lambda: row_ids(browser) == [i + 1 for i in slowest])
    first = browser.execute_script(
        "return document.querySelector('#entries tbody tr').cells[5].textContent")
    assert first == f"{(slowest[0] * 37) % 400 + 1} ms"
    # The route table: both routes, busiest first; a click filters by route.
    browser.find_element(By.CSS_SELECTOR, "#routes-box summary").click()
    routes = wait(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#routes tbody tr')].map(r => r.cells[0].textContent)"))
    assert sorted(routes) == ["/v1/teams/{id}", "/v1/users/{id}"]
    browser.find_element(By.CSS_SELECTOR, "#routes tbody tr").click()
    wait(lambda: "route=" in browser.current_url)
    route = parse_qs(urlparse(browser.current_url).query)["route"][0]
    wanted = [i + 1 for i in slowest if f"/v1/{('users', 'teams')[i % 2]}/{{id}}" == route]
    wait(lambda: row_ids(browser) == wanted)
    # The tiles count what the filters match, and the p95 tile is set.
    wait(lambda: browser.execute_script(
        "return document.getElementById('tile-total').textContent") == "10")
    assert browser.execute_script("return document.getElementById('tile-p95').textContent") \
        .endswith("ms")


def test_the_api_docs_page_renders_under_the_content_security_policy(browser, server):
    browser.get(server.url + "/api/proxy-logs/docs")
    wait(lambda: "/_logs/stats" in browser.find_element("id", "paths").text)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
