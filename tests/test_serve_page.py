"""The page at `/` shows the denoising live: driven in headless Chromium (Debian's chromium and
chromium-driver, which .ci/run installs) through selenium, its answer equals the API's."""

from __future__ import annotations

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")

from tests.test_serve import backend, client, running  # noqa: E402, F401  (the digits run and a server)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium's driver manager must not look anything up
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_the_page_draws_every_step_and_shows_the_apis_answer(backend, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running(backend) as (_, _, url):
        browser.get(f"{url}/")
        assert "digits_reverse" in browser.title
        browser.find_element(By.ID, "prompt").send_keys("1234=")
        for field, value in (("max-tokens", "16"), ("seed", "3")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "go").click()
        canvas = browser.find_element(By.ID, "canvas")
        WebDriverWait(browser, 60).until(lambda _: canvas.get_attribute("data-done") == "1")
        cells = browser.find_elements(By.CSS_SELECTOR, "#canvas .cell")
        steps = {c.get_attribute("data-step") for c in cells}
        answer = browser.find_element(By.ID, "answer").text
        browser.save_screenshot(str(tmp_path / "page.png"))
        expected = client(url).chat.completions.create(
            model="digits_reverse", messages=[{"role": "user", "content": "1234="}], max_tokens=16, seed=3
        )
    masked = browser.find_elements(By.CSS_SELECTOR, "#canvas .masked")
    assert len(cells) == 16 and not masked  # every position committed
    assert int(canvas.get_attribute("data-steps")) == 16 and len(steps) == 16  # one token per step, each drawn
    assert answer == expected.choices[0].message.content
