//! The record LED and record button on a Raspberry Pi's GPIO header (`[gpio]` in the
//! config, pins from the board manifest).
//!
//! Owns the two pins and one async task on the daemon's runtime. The task samples the
//! button every `POLL`, debounces it, and on each press toggles recording of the appliance
//! camera; it drives the LED from the engine's camera state: steady on while recording,
//! blinking after a camera error (the same condition `/health` calls "degraded") or a
//! refused button start, off when idle.
//!
//! The pure parts (`Debouncer`, `LedMode`, `Led`) take time as an argument and do no IO,
//! so tests drive them with made-up instants. Pins sit behind the small `Pins` trait, so
//! the task itself is tested with fake pins.
//!
//! It must never stop the daemon from starting: without Pi GPIO (a dev host, QEMU, a
//! missing `/dev/gpiomem`) or without configured pins it reports itself absent, with the
//! reason, and does nothing else. It must not block the runtime: engine calls that commit
//! (start, stop) run on the blocking pool, and the per-tick reads are lock-free atomics or
//! a mutex held for a clone.
//!
//! Why polling, not edge interrupts: the LED needs a timer loop for blinking anyway;
//! reading one memory-mapped register every 10 ms costs nothing measurable; rppal's async
//! interrupts would add a thread per pin and put the debounce on the kernel's or the
//! callback's clock, where tests cannot reach it. Polling keeps one task, one code path,
//! and a debouncer that is a pure function of (sample, time).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use embassy_time::{Duration, Instant, Ticker};
use serde::Serialize;

use crate::config::GpioConfig;
use crate::engine::{Engine, EngineError, Kind};

/// How often the button is sampled and the LED updated. A 30 ms debounce window then
/// sees three samples; a person cannot press and release in less than about 50 ms.
pub const POLL: Duration = Duration::from_millis(10);

// ----- status -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioState {
    Active,
    Absent,
}

/// What `/health` shows: `{"state": "active"|"absent", "reason"?: ..., "led": 17, "button": 27}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpioStatus {
    pub state: GpioState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub led: Option<u8>,
    pub button: Option<u8>,
}

impl GpioStatus {
    fn absent(cfg: &GpioConfig, reason: impl std::fmt::Display) -> GpioStatus {
        GpioStatus {
            state: GpioState::Absent,
            reason: Some(reason.to_string()),
            led: cfg.record_led,
            button: cfg.record_button,
        }
    }
}

/// Why the feature is absent: one error enum for the hardware boundary.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("no GPIO pins configured ([gpio] record_led / record_button)")]
    NoPins,
    #[error("no Raspberry Pi GPIO on this machine: {0}")]
    Unavailable(#[source] rppal::gpio::Error),
    #[error("cannot use BCM {pin} as the record {role}: {source}")]
    Pin { pin: u8, role: &'static str, source: rppal::gpio::Error },
}

/// The status of the one GPIO task of this process. The pins are a per-device resource
/// (rppal itself keeps one process-wide GPIO state), so the status is process-wide too;
/// that also lets `/health` read it without a field on `Engine`.
static STATUS: Mutex<Option<GpioStatus>> = Mutex::new(None);

/// The GPIO feature's status for `/health`; "absent" until `spawn` has run.
pub fn status() -> GpioStatus {
    STATUS.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or(GpioStatus {
        state: GpioState::Absent,
        reason: Some("the GPIO task was not started".into()),
        led: None,
        button: None,
    })
}

fn set_status(s: &GpioStatus) {
    *STATUS.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
}

// ----- pure logic: debouncer ----------------------------------------------------------

/// A debounced change of the button.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Pressed,
    Released,
}

/// Turns raw samples into stable presses and releases: a new level counts once it has
/// held for the whole window, so contact bounce (a few ms of flicker) never does.
#[derive(Debug, Clone)]
pub struct Debouncer {
    window: Duration,
    stable: bool,
    candidate: bool,
    since: Instant,
}

impl Debouncer {
    /// Starts from the first sample as the stable level, so a button held (or wired
    /// wrong) at boot does not toggle recording by itself.
    pub fn new(window: Duration, pressed: bool, now: Instant) -> Debouncer {
        Debouncer { window, stable: pressed, candidate: pressed, since: now }
    }

    /// One sample (`pressed` after polarity) at `now`; the edge when the stable level changes.
    pub fn sample(&mut self, pressed: bool, now: Instant) -> Option<Edge> {
        if pressed != self.candidate {
            self.candidate = pressed;
            self.since = now;
        }
        if self.candidate != self.stable && now.saturating_duration_since(self.since) >= self.window {
            self.stable = self.candidate;
            return Some(if self.stable { Edge::Pressed } else { Edge::Released });
        }
        None
    }

    pub fn is_pressed(&self) -> bool {
        self.stable
    }
}

/// The button's logic level to "pressed": active-low buttons pull the pin to GND.
pub fn pressed(level_high: bool, active_low: bool) -> bool {
    level_high != active_low
}

// ----- pure logic: LED ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedMode {
    Off,
    On,
    Blink,
}

impl LedMode {
    /// Recording wins over an error: while the camera runs, an older error is history.
    pub fn from_engine(recording: bool, error: bool) -> LedMode {
        match (recording, error) {
            (true, _) => LedMode::On,
            (false, true) => LedMode::Blink,
            (false, false) => LedMode::Off,
        }
    }
}

/// The LED's level over time. Blinking starts with the LED on, so an error shows at once,
/// and keeps its phase while the mode stays the same.
#[derive(Debug, Clone)]
pub struct Led {
    half_period: Duration,
    mode: LedMode,
    since: Instant,
}

impl Led {
    pub fn new(half_period: Duration, now: Instant) -> Led {
        Led { half_period, mode: LedMode::Off, since: now }
    }

    pub fn set_mode(&mut self, mode: LedMode, now: Instant) {
        if mode != self.mode {
            self.mode = mode;
            self.since = now;
        }
    }

    pub fn is_on(&self, now: Instant) -> bool {
        match self.mode {
            LedMode::Off => false,
            LedMode::On => true,
            LedMode::Blink => {
                let half = self.half_period.as_ticks().max(1);
                (now.saturating_duration_since(self.since).as_ticks() / half).is_multiple_of(2)
            }
        }
    }
}

// ----- hardware -----------------------------------------------------------------------

/// The two pins as the task sees them; either may be unconfigured.
pub trait Pins: Send + 'static {
    /// The button's raw logic level (true = high), or None without a button.
    fn button_high(&mut self) -> Option<bool>;
    /// Drives the LED (true = on); does nothing without an LED.
    fn set_led(&mut self, on: bool);
}

/// The real pins through rppal.
#[derive(Debug)]
struct RppalPins {
    led: Option<rppal::gpio::OutputPin>,
    button: Option<rppal::gpio::InputPin>,
}

impl Pins for RppalPins {
    fn button_high(&mut self) -> Option<bool> {
        self.button.as_ref().map(|b| b.is_high())
    }

    fn set_led(&mut self, on: bool) {
        if let Some(l) = self.led.as_mut() {
            if on { l.set_high() } else { l.set_low() }
        }
    }
}

impl Drop for RppalPins {
    fn drop(&mut self) {
        // rppal puts an output pin back into its previous mode on drop but leaves the level
        // alone; switch the LED off first so a stopped daemon never shows "recording".
        self.set_led(false);
    }
}

fn open_pins(cfg: &GpioConfig) -> Result<RppalPins, GpioError> {
    if cfg.record_led.is_none() && cfg.record_button.is_none() {
        return Err(GpioError::NoPins);
    }
    let gpio = rppal::gpio::Gpio::new().map_err(GpioError::Unavailable)?;
    let pin = |pin: u8, role| gpio.get(pin).map_err(|source| GpioError::Pin { pin, role, source });
    let led = cfg.record_led.map(|p| pin(p, "LED")).transpose()?.map(|p| p.into_output_low());
    let button = cfg
        .record_button
        .map(|p| pin(p, "button"))
        .transpose()?
        .map(|p| if cfg.button_active_low { p.into_input_pullup() } else { p.into_input_pulldown() });
    Ok(RppalPins { led, button })
}

// ----- the task -----------------------------------------------------------------------

/// The running GPIO task; dropping the handle leaves it running, `stop` ends it (and the
/// pins' drop switches the LED off).
#[derive(Debug)]
pub struct GpioHandle {
    status: GpioStatus,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl GpioHandle {
    pub fn status(&self) -> &GpioStatus {
        &self.status
    }

    pub fn stop(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Opens the configured pins and starts the task on the current tokio runtime. Never
/// fails: without Pi GPIO or pins the handle says "absent" and why.
pub fn spawn(cfg: &GpioConfig, engine: Arc<Engine>) -> GpioHandle {
    match open_pins(cfg) {
        Ok(pins) => spawn_with(cfg, engine, pins),
        Err(e) => {
            tracing::info!(reason = %e, "record LED and button absent");
            let status = GpioStatus::absent(cfg, e);
            set_status(&status);
            GpioHandle { status, task: None }
        }
    }
}

/// Starts the task over any `Pins` (the real ones, or fakes in tests).
pub fn spawn_with(cfg: &GpioConfig, engine: Arc<Engine>, pins: impl Pins) -> GpioHandle {
    let status = GpioStatus { state: GpioState::Active, reason: None, led: cfg.record_led, button: cfg.record_button };
    tracing::info!(led = ?cfg.record_led, button = ?cfg.record_button, "record LED and button active");
    set_status(&status);
    let task = tokio::spawn(run(cfg.clone(), engine, pins));
    GpioHandle { status, task: Some(task) }
}

async fn run(cfg: GpioConfig, engine: Arc<Engine>, mut pins: impl Pins) {
    let debounce = Duration::from_millis(cfg.debounce_ms.into());
    let now = Instant::now();
    let mut button = pins.button_high().map(|h| Debouncer::new(debounce, pressed(h, cfg.button_active_low), now));
    let mut led = Led::new(Duration::from_millis(cfg.blink_ms.into()), now);
    let mut led_on = false;
    pins.set_led(false);
    // A start or stop in flight; presses meanwhile are ignored, so a nervous double press
    // cannot start two sessions.
    let mut toggling: Option<tokio::task::JoinHandle<ToggleResult>> = None;
    // Why the last button action failed (e.g. no camera); shown by blinking until the
    // next action succeeds.
    let mut button_error: Option<String> = None;
    let mut ticker = Ticker::every(POLL);
    loop {
        ticker.next().await;
        let now = Instant::now();
        if toggling.as_ref().is_some_and(|t| t.is_finished())
            && let Some(t) = toggling.take()
        {
            match t.await {
                Ok(Ok(done)) => {
                    tracing::info!(?done, "record button");
                    button_error = None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "record button: the camera did not toggle");
                    button_error = Some(e.to_string());
                }
                Err(e) => button_error = Some(format!("record button task failed: {e}")),
            }
        }
        if let (Some(d), Some(high)) = (button.as_mut(), pins.button_high())
            && d.sample(pressed(high, cfg.button_active_low), now) == Some(Edge::Pressed)
            && toggling.is_none()
        {
            let e = engine.clone();
            toggling = Some(tokio::task::spawn_blocking(move || toggle(&e)));
        }
        let recording = engine.camera_state.running.load(Relaxed);
        let camera_error = engine.camera_state.last_error.lock().map(|g| g.is_some()).unwrap_or(false);
        // Storage full with nothing left that retention may delete blinks like an error.
        let storage_full = engine.retention_blocked().is_some();
        led.set_mode(LedMode::from_engine(recording, camera_error || storage_full || button_error.is_some()), now);
        let on = led.is_on(now);
        if on != led_on {
            pins.set_led(on);
            led_on = on;
        }
    }
}

type ToggleResult = Result<Toggled, EngineError>;

/// What a press did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toggled {
    Started(String),
    Stopped(String),
}

/// One press: stops whatever the camera records (started by the button or the API), or
/// else creates a camera session and starts it; in continuous mode, pauses or resumes
/// continuous recording. Blocking (commits to the store).
pub fn toggle(engine: &Arc<Engine>) -> ToggleResult {
    // In continuous mode a press pauses and resumes the segments instead.
    if engine.cfg.record.mode == crate::config::RecordMode::Continuous {
        let st = engine.record_status();
        if st.state == "recording" {
            engine.pause_continuous()?;
            return Ok(Toggled::Stopped(st.session.unwrap_or_default()));
        }
        let st = engine.resume_continuous()?;
        return Ok(Toggled::Started(st.session.unwrap_or_default()));
    }
    if let Some(sid) = engine.camera_session() {
        engine.stop_recording(&sid)?;
        return Ok(Toggled::Stopped(sid));
    }
    let now = crate::util::now_rfc3339();
    let row = engine.create_session(None, format!("Button recording {now}"), Kind::Camera, |r| {
        r.metadata = serde_json::json!({ "started_by": "gpio-button" });
    })?;
    if let Err(e) = engine.start_recording(&row.id) {
        // Nothing was recorded into the session this press created: remove it, as the
        // recorder service does for a refused start.
        if let Err(e2) = engine.delete(&row.id) {
            tracing::warn!(session = %row.id, error = %e2, "could not remove the session of a refused start");
        }
        return Err(e);
    }
    Ok(Toggled::Started(row.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    fn presses(d: &mut Debouncer, samples: &[(u64, bool)]) -> Vec<(u64, Edge)> {
        samples.iter().filter_map(|&(t, p)| d.sample(p, ms(t)).map(|e| (t, e))).collect()
    }

    #[test]
    fn bounces_within_the_window_give_one_press() {
        let mut d = Debouncer::new(Duration::from_millis(30), false, ms(0));
        // Contact bounce for 8 ms, then held: one press, 30 ms after the last bounce.
        let mut s = vec![(10, true), (12, false), (14, true), (16, false), (18, true)];
        s.extend((20..=100).step_by(10).map(|t| (t, true)));
        assert_eq!(presses(&mut d, &s), vec![(50, Edge::Pressed)]);
    }

    #[test]
    fn a_long_press_is_one_press() {
        let mut d = Debouncer::new(Duration::from_millis(30), false, ms(0));
        let s: Vec<(u64, bool)> = (10..=5000).step_by(10).map(|t| (t, true)).collect();
        assert_eq!(presses(&mut d, &s), vec![(40, Edge::Pressed)]);
        assert!(d.is_pressed());
    }

    #[test]
    fn release_noise_is_ignored() {
        let mut d = Debouncer::new(Duration::from_millis(30), false, ms(0));
        let mut s: Vec<(u64, bool)> = (10..=100).step_by(10).map(|t| (t, true)).collect();
        // Short drops while held, and short spikes after the release: no extra presses.
        s.extend([(110, false), (112, true), (120, true), (130, false), (135, true), (140, true)]);
        s.extend((150..=300).step_by(10).map(|t| (t, false)));
        s.extend([(310, true), (315, false), (330, false), (340, true), (345, false), (400, false)]);
        assert_eq!(presses(&mut d, &s), vec![(40, Edge::Pressed), (180, Edge::Released)]);
    }

    #[test]
    fn a_button_held_at_boot_does_not_press() {
        let mut d = Debouncer::new(Duration::from_millis(30), true, ms(0));
        let s: Vec<(u64, bool)> = (10..=500).step_by(10).map(|t| (t, true)).collect();
        assert!(presses(&mut d, &s).is_empty());
    }

    #[test]
    fn polarity() {
        assert!(pressed(false, true), "active-low: low is pressed");
        assert!(!pressed(true, true));
        assert!(pressed(true, false), "active-high: high is pressed");
        assert!(!pressed(false, false));
    }

    #[test]
    fn led_is_steady_on_while_recording_even_after_an_error() {
        let mut led = Led::new(Duration::from_millis(250), ms(0));
        led.set_mode(LedMode::from_engine(true, false), ms(0));
        assert!((0..3000).step_by(10).all(|t| led.is_on(ms(t))));
        led.set_mode(LedMode::from_engine(true, true), ms(3000));
        assert!((3000..6000).step_by(10).all(|t| led.is_on(ms(t))));
    }

    #[test]
    fn led_blinks_with_the_configured_period_on_error() {
        let mut led = Led::new(Duration::from_millis(250), ms(0));
        led.set_mode(LedMode::from_engine(false, true), ms(1000));
        // On at once, then 250 ms on / 250 ms off.
        let seen: Vec<bool> = (1000..2000).step_by(125).map(|t| led.is_on(ms(t))).collect();
        assert_eq!(seen, [true, true, false, false, true, true, false, false]);
        // Setting the same mode again keeps the phase.
        led.set_mode(LedMode::Blink, ms(1300));
        assert!(!led.is_on(ms(1300)));
    }

    #[test]
    fn led_is_off_when_idle() {
        let mut led = Led::new(Duration::from_millis(250), ms(0));
        assert!((0..2000).step_by(10).all(|t| !led.is_on(ms(t))));
        led.set_mode(LedMode::from_engine(true, false), ms(2000));
        led.set_mode(LedMode::from_engine(false, false), ms(2500));
        assert!((2500..4000).step_by(10).all(|t| !led.is_on(ms(t))));
    }

    fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn config_gpio_defaults_and_keys() {
        let c = parse("[gpio]\nrecord_led = 17\nrecord_button = 27\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.gpio.record_led, c.gpio.record_button), (Some(17), Some(27)));
        assert!(c.gpio.button_active_low);
        assert_eq!(c.gpio.debounce_ms, 30);
        let d = Config::default();
        assert_eq!((d.gpio.record_led, d.gpio.record_button), (None, None));
        d.validate().unwrap();
        // The effective config (`lucidd config`) prints and re-reads.
        let again = parse(&toml::to_string_pretty(&c).unwrap()).unwrap();
        assert_eq!(again.gpio.record_button, Some(27));
    }

    #[test]
    fn config_rejects_one_pin_for_led_and_button() {
        let c = parse("[gpio]\nrecord_led = 17\nrecord_button = 17\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("two different pins"), "{err}");
    }

    #[test]
    fn config_rejects_pins_off_the_header_and_bad_timing() {
        for bad in ["record_led = 28", "record_button = 40", "debounce_ms = 0", "debounce_ms = 5000", "blink_ms = 5"] {
            let c = parse(&format!("[gpio]\n{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn config_rejects_unknown_gpio_keys() {
        let err = parse("[gpio]\nrecord_led = 17\nled_pin = 4\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    fn test_engine(dir: &std::path::Path) -> Arc<Engine> {
        test_engine_with(dir, crate::config::SourceKind::Test)
    }

    fn test_engine_with(dir: &std::path::Path, source: crate::config::SourceKind) -> Arc<Engine> {
        let mut c = Config {
            source,
            data_dir: dir.to_owned(),
            api_token: Some("test-token-0123456789".into()),
            ..Config::default()
        };
        c.video.width = 320;
        c.video.height = 240;
        c.video.fps = 15;
        c.video.bitrate_bps = 300_000;
        c.min_free_bytes = 1 << 20;
        Engine::open(c).unwrap()
    }

    /// In continuous mode a press pauses (the segment is sealed, none starts) and the next
    /// resumes with a new segment.
    #[test]
    fn in_continuous_mode_the_button_pauses_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config {
            data_dir: dir.path().to_owned(),
            api_token: Some("test-token-0123456789".into()),
            min_free_bytes: 1 << 20,
            ..Config::default()
        };
        (c.video.width, c.video.height, c.video.fps, c.video.bitrate_bps) = (320, 240, 15, 300_000);
        c.record.mode = crate::config::RecordMode::Continuous;
        let engine = Engine::open(c).unwrap();
        let first = engine.camera_session().expect("recording from the start");
        assert_eq!(toggle(&engine).unwrap(), Toggled::Stopped(first.clone()));
        assert_eq!(engine.record_status().state, "paused");
        assert_eq!(engine.get(&first).unwrap().status.as_str(), "stopped");
        let Toggled::Started(next) = toggle(&engine).unwrap() else { panic!("not resumed") };
        assert_ne!(next, first);
        assert_eq!(engine.record_status().state, "recording");
        engine.shutdown();
    }

    #[tokio::test]
    async fn absent_on_a_machine_without_gpio() {
        if std::path::Path::new("/dev/gpiomem").exists() || std::path::Path::new("/dev/gpiochip0").exists() {
            eprintln!("this machine has GPIO; the absent path is not testable here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let engine = test_engine(dir.path());
        let cfg = GpioConfig { record_led: Some(17), record_button: Some(27), ..GpioConfig::default() };
        let h = spawn(&cfg, engine.clone());
        assert_eq!(h.status().state, GpioState::Absent);
        assert!(h.status().reason.as_deref().unwrap().contains("no Raspberry Pi GPIO"), "{:?}", h.status());
        assert_eq!((h.status().led, h.status().button), (Some(17), Some(27)));
        let json = serde_json::to_value(h.status()).unwrap();
        assert_eq!(json["state"], "absent");
        assert_eq!(json["led"], 17);
        // Nothing else changed: no session, no camera.
        assert!(engine.list().unwrap().is_empty());
        assert!(engine.camera_session().is_none());
        h.stop();

        let none = spawn(&GpioConfig::default(), engine);
        assert_eq!(none.status().state, GpioState::Absent);
        assert!(none.status().reason.as_deref().unwrap().contains("no GPIO pins configured"));
    }

    /// Fake pins: the test sets the button level and reads the LED.
    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<(bool, bool)>>);

    impl Fake {
        fn press(&self, down: bool) {
            // Active-low: pressed pulls the pin low.
            self.0.lock().unwrap().0 = !down;
        }

        fn led(&self) -> bool {
            self.0.lock().unwrap().1
        }
    }

    impl Pins for Fake {
        fn button_high(&mut self) -> Option<bool> {
            Some(self.0.lock().unwrap().0)
        }

        fn set_led(&mut self, on: bool) {
            self.0.lock().unwrap().1 = on;
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// The whole task on embassy-time's std driver inside a tokio runtime: a press starts
    /// a camera session and lights the LED, a second press stops it and the LED goes off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn button_toggles_recording_and_led_follows() {
        let dir = tempfile::tempdir().unwrap();
        let engine = test_engine(dir.path());
        let fake = Fake::default();
        fake.press(false);
        let cfg = GpioConfig { record_led: Some(17), record_button: Some(27), ..GpioConfig::default() };
        let h = spawn_with(&cfg, engine.clone(), fake.clone());
        assert_eq!(h.status().state, GpioState::Active);

        // A bounce shorter than the window does nothing.
        fake.press(true);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        fake.press(false);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(engine.camera_session().is_none());

        fake.press(true);
        wait_for("recording", || engine.camera_session().is_some()).await;
        wait_for("LED on", || fake.led()).await;
        fake.press(false);
        let sid = engine.camera_session().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(fake.led(), "steady on while recording");

        fake.press(true);
        wait_for("stopped", || engine.camera_session().is_none()).await;
        fake.press(false);
        wait_for("LED off", || !fake.led()).await;
        let row = engine.get(&sid).unwrap();
        assert_eq!(row.status.as_str(), "stopped");
        assert_eq!(row.metadata["started_by"], "gpio-button");
        h.stop();
    }

    /// A press the camera refuses (here: no V4L2 path in this build) leaves no session
    /// behind and makes the LED blink.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_start_blinks_the_led() {
        let dir = tempfile::tempdir().unwrap();
        let engine = test_engine_with(dir.path(), crate::config::SourceKind::V4l2);
        let fake = Fake::default();
        fake.press(false);
        let cfg = GpioConfig { record_led: Some(17), record_button: Some(27), blink_ms: 50, ..GpioConfig::default() };
        let h = spawn_with(&cfg, engine.clone(), fake.clone());
        // Let the task take its first sample with the button up: a button already down
        // at start is not a press.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        fake.press(true);
        wait_for("LED on", || fake.led()).await;
        wait_for("LED off again", || !fake.led()).await;
        wait_for("LED on again", || fake.led()).await;
        assert!(engine.camera_session().is_none());
        assert!(engine.list().unwrap().is_empty(), "the refused session was removed");
        h.stop();
    }
}
