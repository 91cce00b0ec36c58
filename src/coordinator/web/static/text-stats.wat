;; text-stats: the seeded WASM Cargo. WASI preview 1; reads {"text": "..."} (JSON) on stdin and prints
;; the Cargo JSON-lines protocol: one token line with {"words":N,"chars":M}, then a done line.
;; chars = Unicode code points of the text (an escape such as \n or \u00e9 counts as one);
;; words = runs of characters separated by whitespace (space, \t, \n, \r, raw or escaped).
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  ;; 0: iovec, 16: nread/nwritten, 256: constants, 1024: output, 4096..131072: stdin
  (data (i32.const 256) "{\"type\":\"token\",\"content\":\"{\\\"words\\\":")
  (data (i32.const 320) ",\\\"chars\\\":")
  (data (i32.const 352) "}\"}\n{\"type\":\"done\"}\n")
  (data (i32.const 384) "{\"type\":\"error\",\"message\":\"input has no text\"}\n")
  (data (i32.const 448) "\"text\"")

  (func $read_all (result i32)
    (local $n i32) (local $got i32)
    (block $eof
      (loop $more
        (i32.store (i32.const 0) (i32.add (i32.const 4096) (local.get $n)))
        (i32.store (i32.const 4) (i32.sub (i32.const 126976) (local.get $n)))
        (br_if $eof (i32.ne (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)) (i32.const 0)))
        (local.set $got (i32.load (i32.const 16)))
        (br_if $eof (i32.eqz (local.get $got)))
        (local.set $n (i32.add (local.get $n) (local.get $got)))
        (br_if $eof (i32.ge_u (local.get $n) (i32.const 126976)))
        (br $more)))
    (local.get $n))

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))

  ;; Offset just after the key "text" in the input, or -1.
  (func $find_key (param $n i32) (result i32)
    (local $i i32) (local $k i32)
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $i) (i32.const 6)) (local.get $n)))
        (local.set $k (i32.const 0))
        (block $mismatch
          (loop $cmp
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (i32.const 4096) (i32.add (local.get $i) (local.get $k))))
                      (i32.load8_u (i32.add (i32.const 448) (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br_if $cmp (i32.lt_u (local.get $k) (i32.const 6)))
            (return (i32.add (local.get $i) (i32.const 6)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const -1))

  (func $is_space (param $c i32) (result i32)
    (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
            (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

  (func $copy (param $src i32) (param $len i32) (param $dst i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $itoa (param $v i32) (param $dst i32) (result i32)
    (local $d i32)
    (local.set $d (i32.const 1))
    (block $top
      (loop $grow
        (br_if $top (i32.lt_u (i32.div_u (local.get $v) (local.get $d)) (i32.const 10)))
        (local.set $d (i32.mul (local.get $d) (i32.const 10)))
        (br $grow)))
    (loop $digit
      (i32.store8 (local.get $dst)
        (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $v) (local.get $d)) (i32.const 10))))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
      (local.set $d (i32.div_u (local.get $d) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $d) (i32.const 0))))
    (local.get $dst))

  (func $fail
    (call $write (i32.const 384) (i32.const 47))
    (call $proc_exit (i32.const 1)))

  (func (export "_start")
    (local $n i32) (local $p i32) (local $c i32) (local $end i32)
    (local $chars i32) (local $words i32) (local $in_word i32) (local $space i32) (local $out i32)
    (local.set $n (call $read_all))
    (local.set $p (call $find_key (local.get $n)))
    (if (i32.lt_s (local.get $p) (i32.const 0)) (then (call $fail) (return)))
    (local.set $end (i32.add (i32.const 4096) (local.get $n)))
    (local.set $p (i32.add (i32.const 4096) (local.get $p)))
    ;; skip whitespace and the colon up to the opening quote of the value
    (block $found
      (loop $skip
        (if (i32.ge_u (local.get $p) (local.get $end)) (then (call $fail) (return)))
        (local.set $c (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br_if $found (i32.eq (local.get $c) (i32.const 34)))
        (br_if $skip (i32.or (call $is_space (local.get $c)) (i32.eq (local.get $c) (i32.const 58))))
        (call $fail) (return)))
    (block $closed
      (loop $char
        (if (i32.ge_u (local.get $p) (local.get $end)) (then (call $fail) (return)))
        (local.set $c (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br_if $closed (i32.eq (local.get $c) (i32.const 34)))
        (local.set $space (call $is_space (local.get $c)))
        (if (i32.eq (local.get $c) (i32.const 92))
          (then
            (local.set $c (i32.load8_u (local.get $p)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (local.set $space (i32.or (i32.or (i32.eq (local.get $c) (i32.const 110)) (i32.eq (local.get $c) (i32.const 116)))
                                      (i32.eq (local.get $c) (i32.const 114))))
            (if (i32.eq (local.get $c) (i32.const 117)) (then (local.set $p (i32.add (local.get $p) (i32.const 4)))))
            (local.set $c (i32.const 65))))
        ;; UTF-8 continuation bytes belong to the previous code point
        (if (i32.ne (i32.and (local.get $c) (i32.const 192)) (i32.const 128))
          (then
            (local.set $chars (i32.add (local.get $chars) (i32.const 1)))
            (if (local.get $space)
              (then (local.set $in_word (i32.const 0)))
              (else
                (if (i32.eqz (local.get $in_word))
                  (then (local.set $words (i32.add (local.get $words) (i32.const 1)))))
                (local.set $in_word (i32.const 1))))))
        (br $char)))
    (local.set $out (call $copy (i32.const 256) (i32.const 38) (i32.const 1024)))
    (local.set $out (call $itoa (local.get $words) (local.get $out)))
    (local.set $out (call $copy (i32.const 320) (i32.const 11) (local.get $out)))
    (local.set $out (call $itoa (local.get $chars) (local.get $out)))
    (local.set $out (call $copy (i32.const 352) (i32.const 20) (local.get $out)))
    (call $write (i32.const 1024) (i32.sub (local.get $out) (i32.const 1024)))))
