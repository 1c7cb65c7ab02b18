"""Screenshot of an HTML report in headless Chromium (Debian's chromium + chromium-driver, Selenium),
as the README's report picture was made:

    python docs/screenshot.py report.html docs/report-vae-vs-gan.png [height]
"""

import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

page, out = Path(sys.argv[1]).resolve(), sys.argv[2]
height = int(sys.argv[3]) if len(sys.argv) > 3 else 1800
options = Options()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size=1250,{height}"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(page.as_uri())
    driver.save_screenshot(out)
finally:
    driver.quit()
print(f"wrote {out}")
