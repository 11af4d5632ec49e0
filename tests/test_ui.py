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


def wait(condition, seconds=30):
    """The first true value of `condition()`; an element it looks for that
    the page has not drawn yet counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
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
    # The tiles are refreshed beside the rows, not before them.
    assert wait(lambda: browser.execute_script(
        "return document.getElementById('tile-total').textContent") in ("5", "6"))


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
    # The tiles come with their own request (refreshStats), not with the rows.
    assert wait(lambda: browser.execute_script(
        "return document.getElementById('tile-total').textContent") == "2")


def test_filters_live_in_the_page_url_and_a_shared_url_restores_them(browser, server):
    from selenium.webdriver.common.by import By
    ingest(server, [make_entry(i, tsMs=None) for i in range(24)])
    sign_in(browser, server)
    browser.find_element(By.ID, "mode-search").click()
    browser.find_element(By.CSS_SELECTOR, "input[name=level][value=error]").click()
    browser.find_element(By.NAME, "serviceName").send_keys("user-api")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    shared = {"level": ["error"], "serviceName": ["user-api"], "mode": ["search"]}
    wait(lambda: parse_qs(urlparse(browser.current_url).query) == shared)
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
    # Its context: the entries around it in its container, itself marked.
    around = wait(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#detail-body .context li')]"
        ".map(li => [Number(li.dataset.id), li.className])"))
    assert around == [[1, "here"]]  # make_entry puts these three in three containers
    browser.find_element(By.CSS_SELECTOR, "#entries tbody tr[data-id='1'] a.trace").click()
    wait(lambda: row_ids(browser) == [1, 3])  # the whole trace, in order
    assert "traceId=t-1" in browser.current_url


def test_the_detail_pane_shows_the_entries_around_one_in_its_container(browser, server):
    from selenium.webdriver.common.by import By
    ingest(server, [make_entry(i, tsMs=None, projectId="p", containerId=("web", "db")[i % 2],
                               url=f"/e/{i}") for i in range(30)])
    sign_in(browser, server, path="/?mode=search")
    wait(lambda: len(row_ids(browser)) == 30)
    browser.find_element(By.CSS_SELECTOR, "#entries tbody tr[data-id='15']").click()

    def around():
        return browser.execute_script(
            "return [...document.querySelectorAll('#detail-body .context li')]"
            ".map(li => Number(li.dataset.id))")
    # id 15 is entry 14, of "web": the ten web entries before and after it.
    wait(lambda: around() == [i for i in range(1, 31, 2) if abs(i - 15) <= 20])
    browser.find_element(By.CSS_SELECTOR, "#detail-body .context li[data-id='17']").click()
    wait(lambda: browser.find_element(By.CSS_SELECTOR, "#detail-body .context li.here")
         .get_attribute("data-id") == "17")


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


@pytest.mark.parametrize("width", [360, 390])
def test_a_narrow_screen_shows_a_card_per_entry_with_the_filters_folded(
        browser, server, tmp_path, width):
    ingest(server, [make_entry(i, tsMs=None, url="/a/very/long/url/" + "x" * 80)
                    for i in range(8)])
    browser.set_window_size(width, 800)
    sign_in(browser, server)
    wait(lambda: len(row_ids(browser)) == 8)
    layout = browser.execute_script("""
        const doc = document.documentElement;
        const rows = [...document.querySelectorAll('#entries tbody tr')];
        const url = rows[0].cells[6].getBoundingClientRect();
        return {overflow: doc.scrollWidth - doc.clientWidth,
                viewport: window.innerHeight, width: doc.clientWidth,
                filtersShown: document.getElementById('filters').checkVisibility(),
                urlLeft: url.left, urlRight: url.right, urlHeight: url.height,
                bottoms: rows.map(r => r.getBoundingClientRect().bottom),
                heights: rows.map(r => r.getBoundingClientRect().height)};""")
    browser.save_screenshot(str(tmp_path / "narrow.png"))
    assert (tmp_path / "narrow.png").stat().st_size > 10_000
    assert layout["overflow"] <= 1
    assert layout["filtersShown"] is False  # folded under "Filters"
    assert layout["urlLeft"] >= 0 and layout["urlRight"] <= layout["width"] + 1  # the url is on screen
    # A card per entry, and a screenful of them above the fold.
    assert sum(bottom <= layout["viewport"] for bottom in layout["bottoms"]) >= 4, layout
    # Unfolding the filters shows them.
    browser.find_element("css selector", "#filters-box summary").click()
    wait(lambda: browser.execute_script(
        "return document.getElementById('filters').checkVisibility()"))
    # Who is signed in stays in sight, also in a tab that did not sign in.
    assert browser.find_element("id", "who").is_displayed()
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    wait(lambda: browser.find_element("id", "who").text == "operator")
    assert browser.find_element("id", "who").is_displayed()


def test_the_page_loads_nothing_from_elsewhere(server):
    for path in ("/", "/ui/app.js", "/ui/app.css"):
        response = requests.get(server.url + path, timeout=10)
        assert response.status_code == 200, path
        text = response.text
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


def test_a_click_on_a_route_header_ranks_the_routes_by_that_column(browser, server):
    from selenium.webdriver.common.by import By
    calls = [make_entry(i, tsMs=None, kind="response", url=f"/fast/{i}", durationMs=10)
             for i in range(6)]
    calls += [make_entry(i, tsMs=None, kind="response", url=f"/slow/{i}", durationMs=900)
              for i in range(2)]
    ingest(server, calls)
    sign_in(browser, server)
    browser.find_element(By.CSS_SELECTOR, "#routes-box summary").click()

    def routes():
        return browser.execute_script(
            "return [...document.querySelectorAll('#routes tbody tr')]"
            ".map(r => r.cells[0].textContent)")
    wait(lambda: routes() == ["/fast/{id}", "/slow/{id}"])  # busiest first
    browser.find_element(By.CSS_SELECTOR, "#routes th[data-sort=p95]").click()
    wait(lambda: routes() == ["/slow/{id}", "/fast/{id}"])
    assert "slowest by p95" in browser.find_element(By.ID, "routes-note").text
    assert browser.find_element(By.CSS_SELECTOR, "#routes th[data-sort=p95]") \
        .get_attribute("aria-sort") == "descending"


def test_the_api_docs_page_renders_under_the_content_security_policy(browser, server):
    browser.get(server.url + "/api/proxy-logs/docs")
    wait(lambda: "/_logs/stats" in browser.find_element("id", "paths").text)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def spiky_hour(now_ms):
    """Three entries a minute over the last hour, and one minute with a
    spike of 400 errors."""
    entries = []
    for minute in range(1, 60):
        for k in range(3):
            entries.append(make_entry(k, tsMs=now_ms - minute * 60_000, level="info",
                                      status=200, durationMs=20 + k))
    entries += [make_entry(i, tsMs=now_ms - 30 * 60_000, level="error", status=500,
                           serviceName="billing-api") for i in range(400)]
    return entries


def test_the_chart_has_axes_a_legend_tooltips_and_survives_a_spike(browser, server):
    ingest(server, spiky_hour(int(time.time() * 1000)))
    sign_in(browser, server)
    wait(lambda: browser.execute_script("return document.querySelectorAll('#chart .bar').length") > 50)
    labels = browser.execute_script(
        "return [...document.querySelectorAll('#chart text.axis')].map(t => t.textContent)")
    assert "0" in labels and any(":" in label for label in labels)  # counts and times
    legend = browser.find_element("id", "chart-legend").text
    for word in ("debug", "info", "warn", "error", "p95", "cut"):
        assert word in legend, legend
    # The quiet minutes stay readable next to the spike.
    heights = browser.execute_script(
        "return [...document.querySelectorAll('#chart .bar.info')].map(r => r.getBBox().height)")
    assert min(heights) > 5, heights
    # Pointing at the spike shows its tooltip, an element of the page.
    from selenium.webdriver.common.action_chains import ActionChains
    spike = browser.execute_script(
        "const bars = [...document.querySelectorAll('#chart .bar.error')];"
        "return bars.length && document.querySelector("
        "`#chart .hover[data-index='${[...document.querySelectorAll('#chart .hover')]"
        ".findIndex(h => Math.abs(h.getBBox().x - bars[0].getBBox().x) < 1)}']`)")
    ActionChains(browser).move_to_element(spike).perform()
    tip = browser.find_element("id", "chart-tip")
    wait(lambda: tip.is_displayed() and "error: 400" in tip.text)
    assert "403 entries" in tip.text  # the spike and that minute's three
    assert not browser.execute_script("return document.querySelector('#chart title')")


def test_a_chart_of_a_few_minutes_of_data_is_fitted_to_them(browser, server):
    now = int(time.time() * 1000)
    ingest(server, [make_entry(i, tsMs=now - (i % 3) * 60_000) for i in range(30)])
    sign_in(browser, server)  # the default range: the last hour, by the minute
    wait(lambda: browser.execute_script("return document.querySelectorAll('#chart .bar').length"))
    slots = browser.execute_script("return document.querySelectorAll('#chart .hover').length")
    assert slots <= 12  # not 60 slots with the data in the last three
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#chart .bar')].map(r => r.getBBox().width)")
    assert min(widths) > 20  # bars a reader can point at


def test_dragging_across_the_chart_selects_a_time_range(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains

    ingest(server, spiky_hour(int(time.time() * 1000)))
    sign_in(browser, server)
    wait(lambda: browser.execute_script("return document.querySelectorAll('#chart .bar').length") > 50)
    chart = browser.find_element("id", "chart")
    width = chart.size["width"]
    (ActionChains(browser).move_to_element_with_offset(chart, -width // 4, 0).click_and_hold()
     .move_by_offset(width // 5, 0).release().perform())
    wait(lambda: "since=" in browser.current_url and "until=" in browser.current_url)
    query = parse_qs(urlparse(browser.current_url).query)
    since, until = query["since"][0], query["until"][0]
    assert since < until and query["mode"] == ["search"]
    from datetime import datetime
    # Readable: to the minute, with its offset (no milliseconds).
    assert len(since) <= 22 and "." not in since, since
    span_s = (datetime.fromisoformat(until.replace("Z", "+00:00"))
              - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds()
    assert 5 * 60 <= span_s <= 30 * 60  # about a fifth of the hour
    wait(lambda: row_ids(browser))  # the API took them


def test_a_facet_click_filters_the_query(browser, server):
    from selenium.webdriver.common.by import By

    ingest(server, [make_entry(i, tsMs=None) for i in range(12)])
    sign_in(browser, server)
    chip = wait(lambda: browser.find_element(
        By.CSS_SELECTOR, '#facets button[data-field="serviceName"][data-value="billing-api"]'))
    assert chip.text == "billing-api 4"
    chip.click()
    wait(lambda: "serviceName=billing-api" in browser.current_url)
    wait(lambda: sorted(row_ids(browser)) == [2, 5, 8, 11])
    wait(lambda: browser.execute_script(
        "return document.getElementById('tile-total').textContent") == "4")


def test_alert_on_this_search_makes_a_rule_of_the_filters_and_lists_it(browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = Server(tmp_path, env={"LOGSVC_WEBHOOK_ALLOW": "127.0.0.1/32"})
    server.start()
    try:
        sign_in(browser, server, path="/?projectId=shop&level=error&since=15m&mode=search")
        browser.find_element(By.CSS_SELECTOR, "#alerts-box summary").click()
        form = browser.find_element(By.ID, "alert-form")
        form.find_element(By.NAME, "name").send_keys("shop errors")
        form.find_element(By.NAME, "threshold").send_keys("10")
        form.find_element(By.NAME, "webhook").send_keys("ftp://hooks.example.com/x")
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait(lambda: "'webhook'" in browser.find_element(By.ID, "alert-error").text)
        form.find_element(By.NAME, "webhook").clear()
        form.find_element(By.NAME, "webhook").send_keys("http://127.0.0.1:9/hook")
        form.find_element(By.CSS_SELECTOR, "button").click()
        row = wait(lambda: browser.find_element(By.CSS_SELECTOR, "#alerts tbody tr"))
        assert "shop errors" in row.text and "count > 10" in row.text and "ok" in row.text
        rules = requests.get(server.url + "/api/proxy-logs/_alerts", headers=ADMIN,
                             timeout=10).json()["alerts"]
        # The page's filters, not its time range: the window sets that.
        assert [r["filters"] for r in rules] == [{"level": "error", "projectId": "shop"}]
        # Edit: the form takes the rule's settings; saving changes them, not its filters.
        row.find_element(By.XPATH, ".//button[text()='Edit']").click()
        threshold = form.find_element(By.NAME, "threshold")
        assert threshold.get_attribute("value") == "10"
        threshold.clear()
        threshold.send_keys("25")
        form.find_element(By.CSS_SELECTOR, "button").click()
        wait(lambda: "count > 25" in browser.find_element(By.CSS_SELECTOR, "#alerts tbody tr").text)
        rules = requests.get(server.url + "/api/proxy-logs/_alerts", headers=ADMIN,
                             timeout=10).json()["alerts"]
        assert [(r["condition"]["threshold"], r["filters"]) for r in rules] == \
            [(25, {"level": "error", "projectId": "shop"})]
        row = browser.find_element(By.CSS_SELECTOR, "#alerts tbody tr")
        row.find_element(By.XPATH, ".//button[text()='Delete']").click()
        wait(lambda: not browser.find_elements(By.CSS_SELECTOR, "#alerts tbody tr"))
        assert requests.get(server.url + "/api/proxy-logs/_alerts", headers=ADMIN,
                            timeout=10).json()["alerts"] == []
    finally:
        server.stop()
