# A machine with a display: text written to its console shows on the screen, which the
# test takes a screenshot of and reads back with OCR (tesseract, on the host). The
# screenshot lands in the driver's output directory: the current one, or `-- -o DIR`.
machine.start()
# the console is drawn on the screen once the guest's framebuffer is up
machine.wait_until_succeeds("test -e /dev/fb0", timeout=60)
machine.succeed("printf '\\033[2J\\033[H' > /dev/tty1; echo 'HELLO FROM THE SCREEN 42' > /dev/tty1")

with subtest("a screenshot"):
    machine.screenshot("screen")  # screen.png

with subtest("the text on the screen, read by OCR"):
    machine.wait_for_text(r"FROM THE SCREEN \d+")
    assert "HELLO" in machine.get_screen_text()
