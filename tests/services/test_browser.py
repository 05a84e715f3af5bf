"""The player page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium) plays against the served tiny release, with W held down.

Chromium missing fails the test with the install command; LINGBOT_RT_SKIP_BROWSER=1 skips it
instead. LINGBOT_RT_SCREENSHOT=PATH also copies the screenshot to PATH.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from lingbot_rt.pipeline.tiny_checkpoint import make_tiny_checkpoint
from tests.services.test_web import serve

INSTALL = "apt-get install -y --no-install-recommends chromium chromium-driver"
READOUT = re.compile(r"frame (\d+): ([\d.]+) fps, action->frame p50 (\d+|-) ms")   # "-": no new action


def browser_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("LINGBOT_RT_SKIP_BROWSER") == "1":
        pytest.skip("LINGBOT_RT_SKIP_BROWSER=1 and no chromium/chromedriver on PATH")
    pytest.fail(f"the browser test needs Debian's chromium and chromedriver on PATH: {INSTALL} "
                "(or set LINGBOT_RT_SKIP_BROWSER=1 to skip it)")


@contextmanager
def served(release):
    """The same server as test_web's, on its own event loop thread; yields the web port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        server = serve(release)
        return server, (await server.start())[1]

    try:
        server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
        try:
            yield port
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(grace=0.5), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def chromium(browser: str, driver_path: str, tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=760,1100", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # DevTools events: WebSocket frames
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def websocket_texts(driver) -> tuple[list[dict], list[dict]]:
    """The JSON text messages the page sent and received, from the DevTools performance log."""
    sent, received = [], []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        response = message.get("params", {}).get("response", {})
        if response.get("opcode") == 1 and message["method"] in ("Network.webSocketFrameSent",
                                                                 "Network.webSocketFrameReceived"):
            out = sent if message["method"] == "Network.webSocketFrameSent" else received
            out.append(json.loads(response["payloadData"]))
    return sent, received


def test_player_page_plays_while_w_is_held(tmp_path):
    browser, driver_path = browser_paths()
    release = make_tiny_checkpoint(tmp_path / "tiny")
    with served(release) as port, chromium(browser, driver_path, tmp_path) as driver:
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.ID, "start").click()
        stats = driver.find_element(By.ID, "stats")
        WebDriverWait(driver, 30, poll_frequency=0.05).until(lambda d: READOUT.search(stats.text))

        ActionChains(driver).key_down("w").perform()
        assert driver.find_element(By.ID, "kw").get_attribute("class") == "on"
        canvas_images, readouts, sent, received = set(), [], [], []

        def played_on(d):
            """The canvas changed, the readout moved on and shows a latency, a frame made under W came."""
            canvas_images.add(d.execute_script("return document.getElementById('view').toDataURL()"))
            if (m := READOUT.search(stats.text)) and (not readouts or readouts[-1] != m.groups()):
                readouts.append(m.groups())
            more_sent, more_received = websocket_texts(d)
            sent.extend(more_sent)
            received.extend(more_received)
            w_seqs = {m["seq"] for m in sent if m["type"] == "action" and m["keys"] == "w"}
            return (len(canvas_images) >= 3 and len(readouts) >= 2 and any(ms != "-" for _, _, ms in readouts)
                    and any(m["type"] == "frame" and m["action_seq"] in w_seqs for m in received))

        WebDriverWait(driver, 30, poll_frequency=0.05).until(played_on)
        screenshot = tmp_path / "browser_player.png"
        assert driver.save_screenshot(str(screenshot))             # W still held: its key shows on
        ActionChains(driver).key_up("w").perform()

    frame_counts = [int(frame) for frame, _, _ in readouts]
    assert frame_counts == sorted(frame_counts) and frame_counts[-1] > frame_counts[0]
    assert all(float(fps) > 0 for _, fps, _ in readouts)
    # the page sends its (empty) keys on connecting, then one action for W however long it is held
    assert [m["keys"] for m in sent if m["type"] == "action"] == ["", "w"]
    if target := os.environ.get("LINGBOT_RT_SCREENSHOT"):
        shutil.copyfile(screenshot, target)
