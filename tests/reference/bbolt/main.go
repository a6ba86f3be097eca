// Real bbolt on the other side of oxcd-bbolt's tests (tests/tests/bbolt.rs):
//
//	bbolt-ref make FILE   writes a database with nested, inline and empty buckets, values larger
//	                      than a page and enough keys for branch pages, through bbolt's own API;
//	bbolt-ref dump FILE   runs bbolt's consistency check on FILE, then prints every bucket and
//	                      entry, depth first in key order, one line each:
//	                      "B <path>" or "K <path> <hex key> <value length> <sha256 of value>",
//	                      where <path> is the hex names of the enclosing buckets joined by '/'.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"
)

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: bbolt-ref make|dump FILE"))
	}
	var err error
	switch os.Args[1] {
	case "make":
		err = makeDB(os.Args[2])
	case "dump":
		err = dump(os.Args[2])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bbolt-ref:", err)
	os.Exit(1)
}

func makeDB(path string) error {
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Update(func(tx *bolt.Tx) error {
		flat, err := tx.CreateBucket([]byte("flat"))
		if err != nil {
			return err
		}
		for i := 0; i < 5000; i++ {
			if err := flat.Put([]byte(fmt.Sprintf("key%06d", i)), []byte(strings.Repeat("v", i%300))); err != nil {
				return err
			}
		}
		if err := flat.Put([]byte("large"), []byte(strings.Repeat("L", 20000))); err != nil {
			return err
		}
		if _, err := tx.CreateBucket([]byte("empty")); err != nil {
			return err
		}
		nested, err := tx.CreateBucket([]byte("nested"))
		if err != nil {
			return err
		}
		if err := nested.Put([]byte("a"), []byte("1")); err != nil {
			return err
		}
		inline, err := nested.CreateBucket([]byte("inline"))
		if err != nil {
			return err
		}
		if err := inline.Put([]byte("x"), []byte("y")); err != nil {
			return err
		}
		deep, err := nested.CreateBucket([]byte("paged"))
		if err != nil {
			return err
		}
		for i := 0; i < 1000; i++ {
			if err := deep.Put([]byte(fmt.Sprintf("d%05d", i)), []byte(strings.Repeat("d", 50))); err != nil {
				return err
			}
		}
		inner, err := deep.CreateBucket([]byte("zz-inner"))
		if err != nil {
			return err
		}
		return inner.Put([]byte("k"), []byte("v"))
	})
}

func dump(path string) error {
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("check: %w", err)
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return dumpBucket(hex.EncodeToString(name), b)
		})
	})
}

func dumpBucket(path string, b *bolt.Bucket) error {
	fmt.Printf("B %s\n", path)
	return b.ForEach(func(k, v []byte) error {
		if v == nil {
			return dumpBucket(path+"/"+hex.EncodeToString(k), b.Bucket(k))
		}
		sum := sha256.Sum256(v)
		fmt.Printf("K %s %x %d %x\n", path, k, len(v), sum)
		return nil
	})
}
